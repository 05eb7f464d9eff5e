-- What strategy a backtest ran (STRATEGY, STRATEGY_PARAMS, sha256 of the class's source
-- file), so `ticktape backtest compare` can name it. Null: a run stored before these
-- columns (the built-in strategy, its parameters in `parameters`).
ALTER TABLE backtest_runs ADD COLUMN IF NOT EXISTS strategy text;
ALTER TABLE backtest_runs ADD COLUMN IF NOT EXISTS strategy_params jsonb;
ALTER TABLE backtest_runs ADD COLUMN IF NOT EXISTS strategy_sha256 text;
