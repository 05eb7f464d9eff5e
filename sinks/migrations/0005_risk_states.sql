-- Trading-state changes of the risk engine (kill switch, operator resets): topic trading.risk.
CREATE TABLE risk_states (
    event_id      text             NOT NULL,
    account       text             NOT NULL,
    ts            timestamptz      NOT NULL,
    trading_state text             NOT NULL CHECK (trading_state IN ('ACTIVE', 'REDUCING', 'HALTED')),
    reason        text,
    detail        text             NOT NULL,
    equity        double precision NOT NULL,
    daily_pnl     double precision NOT NULL,
    PRIMARY KEY (event_id, ts)
);
CREATE INDEX risk_states_account_ts ON risk_states (account, ts DESC);
