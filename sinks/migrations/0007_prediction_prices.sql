-- Prediction v2 carries the scored bar's close and volatility_20 (the strategy trades
-- and marks at them). Nullable: v1 predictions have neither.
ALTER TABLE predictions ADD COLUMN IF NOT EXISTS close double precision CHECK (close > 0);
ALTER TABLE predictions ADD COLUMN IF NOT EXISTS volatility_20 double precision CHECK (volatility_20 >= 0);
