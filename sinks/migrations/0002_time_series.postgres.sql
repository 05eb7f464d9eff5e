-- Plain PostgreSQL: the 1 h and 1 day bars as ordinary views over the 1-min bars, with
-- the same columns as the TimescaleDB continuous aggregates, so dashboards run on both.
-- Buckets are aligned on UTC midnight like time_bucket's.

CREATE VIEW bars_1h AS
SELECT date_bin('1 hour', window_start, TIMESTAMPTZ '2000-01-01 00:00:00+00') AS bucket,
       symbol,
       (array_agg(open ORDER BY window_start))[1]        AS open,
       max(high)                                         AS high,
       min(low)                                          AS low,
       (array_agg(close ORDER BY window_start DESC))[1]  AS close,
       sum(volume)                                       AS volume,
       sum(vwap * volume) / NULLIF(sum(volume), 0)       AS vwap,
       sum(trade_count)::bigint                          AS trade_count,
       count(*)                                          AS bar_count
FROM bars
WHERE interval = '1m'
GROUP BY 1, 2;

CREATE VIEW bars_1d AS
SELECT date_bin('1 day', bucket, TIMESTAMPTZ '2000-01-01 00:00:00+00') AS bucket,
       symbol,
       (array_agg(open ORDER BY bucket))[1]              AS open,
       max(high)                                         AS high,
       min(low)                                          AS low,
       (array_agg(close ORDER BY bucket DESC))[1]        AS close,
       sum(volume)                                       AS volume,
       sum(vwap * volume) / NULLIF(sum(volume), 0)       AS vwap,
       sum(trade_count)::bigint                          AS trade_count,
       sum(bar_count)::bigint                            AS bar_count
FROM bars_1h
GROUP BY 1, 2;
