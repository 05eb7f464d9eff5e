-- Tables of record (SPEC §6): one row per event, columns = the Avro fields of the
-- event's schema (times as timestamptz).  Key: (event_id, <time column>) because a
-- TimescaleDB hypertable's unique index must include its time column; the same key is
-- used on plain PostgreSQL so both behave alike.  The time column is `ts` (event time)
-- everywhere except `bars`, which is partitioned on `window_start` so that a 1-min bar
-- falls into the hour/day its window starts in (bars_1h / bars_1d).
-- CHECK constraints reject facts that cannot be true; such an event goes to dlq.postgres.

CREATE TABLE ticks (
    event_id    text             NOT NULL,
    symbol      text             NOT NULL,
    ts          timestamptz      NOT NULL,
    source      text             NOT NULL,
    seq         bigint           NOT NULL,
    price       double precision CHECK (price >= 0),
    size        double precision CHECK (size >= 0),
    bid         double precision CHECK (bid >= 0),
    ask         double precision CHECK (ask >= 0),
    bid_size    double precision CHECK (bid_size >= 0),
    ask_size    double precision CHECK (ask_size >= 0),
    PRIMARY KEY (event_id, ts)
);
CREATE INDEX ticks_symbol_ts ON ticks (symbol, ts DESC);

CREATE TABLE bars (
    event_id     text             NOT NULL,
    symbol       text             NOT NULL,
    interval     text             NOT NULL,
    ts           timestamptz      NOT NULL,
    window_start timestamptz      NOT NULL,
    window_end   timestamptz      NOT NULL,
    open         double precision NOT NULL CHECK (open >= 0),
    high         double precision NOT NULL,
    low          double precision NOT NULL CHECK (low >= 0),
    close        double precision NOT NULL CHECK (close >= 0),
    volume       double precision NOT NULL CHECK (volume >= 0),
    vwap         double precision NOT NULL CHECK (vwap >= 0),
    trade_count  bigint           NOT NULL CHECK (trade_count >= 0),
    PRIMARY KEY (event_id, window_start),
    CHECK (high >= low),
    CHECK (window_end > window_start)
);
CREATE INDEX bars_symbol_interval_start ON bars (symbol, interval, window_start DESC);

CREATE TABLE indicators (
    event_id      text             NOT NULL,
    symbol        text             NOT NULL,
    interval      text             NOT NULL,
    ts            timestamptz      NOT NULL,
    close         double precision NOT NULL,
    volume        double precision NOT NULL,
    sma_10        double precision,
    sma_20        double precision,
    sma_50        double precision,
    sma_200       double precision,
    ema_12        double precision,
    ema_26        double precision,
    rsi_5         double precision CHECK (rsi_5 BETWEEN 0 AND 100),
    rsi_14        double precision CHECK (rsi_14 BETWEEN 0 AND 100),
    macd          double precision,
    macd_signal   double precision,
    macd_hist     double precision,
    bb_upper      double precision,
    bb_middle     double precision,
    bb_lower      double precision,
    atr_14        double precision,
    volatility_20 double precision,
    momentum_5    double precision,
    momentum_20   double precision,
    vwap          double precision,
    obv           double precision,
    PRIMARY KEY (event_id, ts)
);
CREATE INDEX indicators_symbol_interval_ts ON indicators (symbol, interval, ts DESC);

CREATE TABLE predictions (
    event_id      text             NOT NULL,
    symbol        text             NOT NULL,
    interval      text             NOT NULL,
    ts            timestamptz      NOT NULL,
    model_name    text             NOT NULL,
    model_version text             NOT NULL,
    p_up          double precision NOT NULL CHECK (p_up BETWEEN 0 AND 1),
    horizon       integer          NOT NULL CHECK (horizon > 0),
    features      jsonb            NOT NULL,
    PRIMARY KEY (event_id, ts)
);
CREATE INDEX predictions_symbol_ts ON predictions (symbol, ts DESC);

CREATE TABLE signals (
    event_id        text             NOT NULL,
    account         text             NOT NULL,
    symbol          text             NOT NULL,
    ts              timestamptz      NOT NULL,
    side            text             NOT NULL CHECK (side IN ('BUY', 'SELL')),
    quantity        double precision NOT NULL CHECK (quantity >= 0),
    target_position double precision NOT NULL,
    reference_price double precision NOT NULL CHECK (reference_price >= 0),
    strategy        text             NOT NULL,
    reason          text             NOT NULL,
    model_version   text,
    PRIMARY KEY (event_id, ts)
);
CREATE INDEX signals_account_symbol_ts ON signals (account, symbol, ts DESC);

CREATE TABLE orders (
    event_id        text             NOT NULL,
    account         text             NOT NULL,
    symbol          text             NOT NULL,
    ts              timestamptz      NOT NULL,
    side            text             NOT NULL CHECK (side IN ('BUY', 'SELL')),
    quantity        double precision NOT NULL CHECK (quantity > 0),
    order_type      text             NOT NULL CHECK (order_type IN ('MARKET', 'LIMIT')),
    limit_price     double precision CHECK (limit_price >= 0),
    reference_price double precision NOT NULL CHECK (reference_price >= 0),
    signal_id       text             NOT NULL,
    PRIMARY KEY (event_id, ts)
);
CREATE INDEX orders_account_symbol_ts ON orders (account, symbol, ts DESC);

CREATE TABLE order_rejections (
    event_id        text             NOT NULL,
    account         text             NOT NULL,
    symbol          text             NOT NULL,
    ts              timestamptz      NOT NULL,
    side            text             NOT NULL CHECK (side IN ('BUY', 'SELL')),
    quantity        double precision NOT NULL,
    reference_price double precision NOT NULL,
    reason_code     text             NOT NULL,
    detail          text             NOT NULL,
    signal_id       text             NOT NULL,
    PRIMARY KEY (event_id, ts)
);
CREATE INDEX order_rejections_account_ts ON order_rejections (account, ts DESC);
CREATE INDEX order_rejections_reason_ts ON order_rejections (reason_code, ts DESC);

CREATE TABLE fills (
    event_id     text             NOT NULL,
    order_id     text             NOT NULL,
    account      text             NOT NULL,
    symbol       text             NOT NULL,
    ts           timestamptz      NOT NULL,
    side         text             NOT NULL CHECK (side IN ('BUY', 'SELL')),
    quantity     double precision NOT NULL CHECK (quantity > 0),
    price        double precision NOT NULL CHECK (price >= 0),
    commission   double precision NOT NULL CHECK (commission >= 0),
    slippage_bps double precision NOT NULL,
    PRIMARY KEY (event_id, ts)
);
CREATE INDEX fills_account_symbol_ts ON fills (account, symbol, ts DESC);
CREATE INDEX fills_order_id ON fills (order_id);

CREATE TABLE positions (
    event_id       text             NOT NULL,
    account        text             NOT NULL,
    symbol         text             NOT NULL,
    ts             timestamptz      NOT NULL,
    quantity       double precision NOT NULL,
    avg_cost       double precision NOT NULL,
    realized_pnl   double precision NOT NULL,
    unrealized_pnl double precision NOT NULL,
    last_price     double precision NOT NULL,
    market_value   double precision NOT NULL,
    PRIMARY KEY (event_id, ts)
);
CREATE INDEX positions_account_symbol_ts ON positions (account, symbol, ts DESC);

CREATE TABLE equity (
    event_id       text             NOT NULL,
    account        text             NOT NULL,
    ts             timestamptz      NOT NULL,
    cash           double precision NOT NULL,
    market_value   double precision NOT NULL,
    equity         double precision NOT NULL,
    gross_exposure double precision NOT NULL CHECK (gross_exposure >= 0),
    realized_pnl   double precision NOT NULL,
    unrealized_pnl double precision NOT NULL,
    PRIMARY KEY (event_id, ts)
);
CREATE INDEX equity_account_ts ON equity (account, ts DESC);
