-- TimescaleDB 2.x: hypertables on event time, columnar compression segmented by symbol
-- and ordered by time then event_id, the rest of the primary key (amended: this file first
-- ordered by time alone, which TimescaleDB warns about; 0009 brings databases migrated
-- with that form to this ordering, and sinks/schema.py accepts its checksum)
-- (compression and retention *policies* come from settings and are re-applied by every
-- `ticktape db migrate`), and continuous aggregates 1 min -> 1 h -> 1 day with refresh
-- policies.  migrate_data: a table that already holds rows is converted in place.

SELECT create_hypertable('ticks', 'ts', chunk_time_interval => INTERVAL '1 day',
                         if_not_exists => TRUE, migrate_data => TRUE);
SELECT create_hypertable('bars', 'window_start', chunk_time_interval => INTERVAL '7 days',
                         if_not_exists => TRUE, migrate_data => TRUE);
SELECT create_hypertable('indicators', 'ts', chunk_time_interval => INTERVAL '7 days',
                         if_not_exists => TRUE, migrate_data => TRUE);
SELECT create_hypertable('predictions', 'ts', chunk_time_interval => INTERVAL '7 days',
                         if_not_exists => TRUE, migrate_data => TRUE);
SELECT create_hypertable(t::regclass, 'ts', chunk_time_interval => INTERVAL '30 days',
                         if_not_exists => TRUE, migrate_data => TRUE)
FROM unnest(ARRAY['signals', 'orders', 'order_rejections', 'fills', 'positions', 'equity']) AS t;

ALTER TABLE ticks SET (timescaledb.compress, timescaledb.compress_segmentby = 'symbol',
                       timescaledb.compress_orderby = 'ts DESC, event_id');
ALTER TABLE bars SET (timescaledb.compress, timescaledb.compress_segmentby = 'symbol',
                      timescaledb.compress_orderby = 'window_start DESC, event_id');
ALTER TABLE indicators SET (timescaledb.compress, timescaledb.compress_segmentby = 'symbol',
                            timescaledb.compress_orderby = 'ts DESC, event_id');
ALTER TABLE predictions SET (timescaledb.compress, timescaledb.compress_segmentby = 'symbol',
                             timescaledb.compress_orderby = 'ts DESC, event_id');

-- WITH NO DATA: a continuous aggregate created WITH DATA cannot run inside the
-- migration's transaction; the refresh policies fill it.  materialized_only = false
-- (real-time aggregation) so the views also show the not yet materialized recent rows,
-- as the plain-PostgreSQL views do.
CREATE MATERIALIZED VIEW bars_1h
WITH (timescaledb.continuous, timescaledb.materialized_only = false) AS
SELECT time_bucket(INTERVAL '1 hour', window_start)     AS bucket,
       symbol,
       first(open, window_start)                        AS open,
       max(high)                                        AS high,
       min(low)                                         AS low,
       last(close, window_start)                        AS close,
       sum(volume)                                      AS volume,
       sum(vwap * volume) / NULLIF(sum(volume), 0)      AS vwap,
       sum(trade_count)::bigint                         AS trade_count,
       count(*)                                         AS bar_count
FROM bars
WHERE interval = '1m'
GROUP BY 1, 2
WITH NO DATA;

-- Hierarchical continuous aggregate (TimescaleDB >= 2.9): days from the hourly buckets.
CREATE MATERIALIZED VIEW bars_1d
WITH (timescaledb.continuous, timescaledb.materialized_only = false) AS
SELECT time_bucket(INTERVAL '1 day', bucket)            AS bucket,
       symbol,
       first(open, bucket)                              AS open,
       max(high)                                        AS high,
       min(low)                                         AS low,
       last(close, bucket)                              AS close,
       sum(volume)                                      AS volume,
       sum(vwap * volume) / NULLIF(sum(volume), 0)      AS vwap,
       sum(trade_count)::bigint                         AS trade_count,
       sum(bar_count)::bigint                           AS bar_count
FROM bars_1h
GROUP BY 1, 2
WITH NO DATA;

-- A refresh window must span at least two buckets; the newest bucket is left to the
-- real-time part while it still receives bars.
SELECT add_continuous_aggregate_policy('bars_1h', start_offset => INTERVAL '3 days',
                                       end_offset => INTERVAL '1 hour',
                                       schedule_interval => INTERVAL '5 minutes',
                                       if_not_exists => TRUE);
SELECT add_continuous_aggregate_policy('bars_1d', start_offset => INTERVAL '7 days',
                                       end_offset => INTERVAL '1 day',
                                       schedule_interval => INTERVAL '1 hour',
                                       if_not_exists => TRUE);
