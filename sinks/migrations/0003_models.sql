-- The model registry (ticktape train / ticktape models): one row per registered model
-- version, the artifact itself included, so any machine with the database can load it.
-- At most one model is active at a time (the partial unique index); activation also
-- announces the model on the compacted ml.models topic, which the predict agents read.
-- The same on plain PostgreSQL and TimescaleDB (a small, ordinary table).

CREATE TABLE models (
    name            text        NOT NULL,
    version         text        NOT NULL,
    registered_at   timestamptz NOT NULL DEFAULT now(),
    interval        text        NOT NULL,
    horizon         integer     NOT NULL CHECK (horizon > 0),
    features        jsonb       NOT NULL,
    metrics         jsonb       NOT NULL,
    metadata        jsonb       NOT NULL,
    artifact        bytea       NOT NULL,
    artifact_sha256 text        NOT NULL,
    active          boolean     NOT NULL DEFAULT false,
    activated_at    timestamptz,
    PRIMARY KEY (name, version)
);
CREATE UNIQUE INDEX models_one_active ON models (active) WHERE active;
CREATE INDEX models_version ON models (version);
