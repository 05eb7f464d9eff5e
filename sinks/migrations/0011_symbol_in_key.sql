-- The tables compressed on TimescaleDB (segmented by symbol, 0002) get symbol in their
-- primary key: (event_id, time, symbol).  An event has one symbol, so the key still
-- identifies an event and a replay still adds nothing.  On a compressed chunk, an INSERT
-- or COPY checks each new row's key against the compressed batches; TimescaleDB finds the
-- batches through the compressed chunk's index (segmentby columns first) only when every
-- segmentby column is in the key, and otherwise reads every batch of the chunk, for every
-- row (late data into a day of ticks slowed down with the size of the day).  On plain
-- PostgreSQL the same key, so both flavors have the same tables.
ALTER TABLE ticks DROP CONSTRAINT ticks_pkey, ADD PRIMARY KEY (event_id, ts, symbol);
ALTER TABLE bars DROP CONSTRAINT bars_pkey, ADD PRIMARY KEY (event_id, window_start, symbol);
ALTER TABLE indicators DROP CONSTRAINT indicators_pkey, ADD PRIMARY KEY (event_id, ts, symbol);
ALTER TABLE predictions DROP CONSTRAINT predictions_pkey, ADD PRIMARY KEY (event_id, ts, symbol);
