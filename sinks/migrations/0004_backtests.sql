-- Backtest runs (ticktape backtest): the run's parameters and figures, its equity curve
-- (one point per strategy bar interval) and its trades (the fills).  Live tables are
-- never written by a backtest.  The same on plain PostgreSQL and TimescaleDB (small,
-- ordinary tables keyed by run).

CREATE TABLE backtest_runs (
    run_id           text        PRIMARY KEY,
    created_at       timestamptz NOT NULL DEFAULT now(),
    mode             text        NOT NULL CHECK (mode IN ('inprocess', 'kafka')),
    period_start     timestamptz NOT NULL,
    period_end       timestamptz NOT NULL,
    symbols          text[]      NOT NULL,
    parameters       jsonb       NOT NULL,
    code_version     text        NOT NULL,
    model_version    text,
    data_fingerprint text        NOT NULL,
    results_sha256   text        NOT NULL,
    metrics          jsonb       NOT NULL,
    counts           jsonb       NOT NULL,
    CHECK (period_end >= period_start)
);

CREATE TABLE backtest_equity (
    run_id          text             NOT NULL REFERENCES backtest_runs ON DELETE CASCADE,
    ts              timestamptz      NOT NULL,
    equity          double precision NOT NULL,
    cash            double precision NOT NULL,
    market_value    double precision NOT NULL,
    gross_exposure  double precision NOT NULL,
    realized_pnl    double precision NOT NULL,
    unrealized_pnl  double precision NOT NULL,
    drawdown        double precision NOT NULL,
    PRIMARY KEY (run_id, ts)
);

CREATE TABLE backtest_trades (
    run_id        text             NOT NULL REFERENCES backtest_runs ON DELETE CASCADE,
    event_id      text             NOT NULL,
    order_id      text             NOT NULL,
    ts            timestamptz      NOT NULL,
    symbol        text             NOT NULL,
    side          text             NOT NULL CHECK (side IN ('BUY', 'SELL')),
    quantity      double precision NOT NULL,
    price         double precision NOT NULL,
    commission    double precision NOT NULL,
    slippage_bps  double precision NOT NULL,
    PRIMARY KEY (run_id, event_id)
);
CREATE INDEX backtest_trades_run_ts ON backtest_trades (run_id, ts);
