-- Compressed hypertables order each symbol's segment by time and then event_id, the
-- rest of their primary key (0002 left event_id out).  With event_id in the ordering,
-- TimescaleDB keeps its min/max per compressed batch, so an INSERT ... ON CONFLICT or a
-- COPY into a compressed chunk (late data, a replay, a backfill) checks the key against
-- the few batches that can hold it instead of decompressing the whole segment.
-- TimescaleDB >= 2.14 keeps settings per chunk and lets them change while compressed
-- chunks exist: chunks compressed from now on use these; chunks compressed before keep
-- theirs until decompressed and compressed again (sinks/README.md says how).
ALTER TABLE ticks SET (timescaledb.compress, timescaledb.compress_segmentby = 'symbol',
                       timescaledb.compress_orderby = 'ts DESC, event_id');
ALTER TABLE bars SET (timescaledb.compress, timescaledb.compress_segmentby = 'symbol',
                      timescaledb.compress_orderby = 'window_start DESC, event_id');
ALTER TABLE indicators SET (timescaledb.compress, timescaledb.compress_segmentby = 'symbol',
                            timescaledb.compress_orderby = 'ts DESC, event_id');
ALTER TABLE predictions SET (timescaledb.compress, timescaledb.compress_segmentby = 'symbol',
                             timescaledb.compress_orderby = 'ts DESC, event_id');
