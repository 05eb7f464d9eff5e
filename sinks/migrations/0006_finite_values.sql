-- Every double column of the tables of record holds a finite number or NULL: in
-- PostgreSQL 'NaN' sorts above every number ('NaN' >= 0 is true) and 'Infinity' passes
-- any lower bound, so the CHECKs of 0001 let both through.  NaN fails both comparisons.
-- TimescaleDB 2.x refuses new constraints on a hypertable with compression enabled: such
-- a table is decompressed, gets its constraints and is set to compress again (with the
-- settings of 0009; the policy is re-applied by `ticktape db migrate` from settings).
-- (Amended: this file first restored 0002's ordering by time alone, which TimescaleDB warns
-- about; 0009 brings databases migrated with that form to the same ordering, and
-- sinks/schema.py accepts its checksum.)

DO $$
DECLARE
    t text;
    c text;
    compressed boolean;
    tables text[] := ARRAY['ticks', 'bars', 'indicators', 'predictions', 'signals', 'orders',
                           'order_rejections', 'fills', 'positions', 'equity', 'risk_states'];
    orderby jsonb := '{"ticks": "ts DESC, event_id", "bars": "window_start DESC, event_id",
                       "indicators": "ts DESC, event_id", "predictions": "ts DESC, event_id"}';
BEGIN
    FOREACH t IN ARRAY tables LOOP
        compressed := false;
        IF EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'timescaledb') THEN
            EXECUTE 'SELECT EXISTS (SELECT 1 FROM timescaledb_information.hypertables '
                    'WHERE hypertable_name = $1 AND compression_enabled)' INTO compressed USING t;
        END IF;
        IF compressed THEN
            EXECUTE format('SELECT remove_compression_policy(%L, if_exists => TRUE)', t);
            EXECUTE format('SELECT decompress_chunk(ch, if_compressed => TRUE) FROM show_chunks(%L) ch', t);
            EXECUTE format('ALTER TABLE %I SET (timescaledb.compress = false)', t);
        END IF;
        FOR c IN SELECT column_name FROM information_schema.columns
                 WHERE table_schema = current_schema() AND table_name = t
                   AND data_type = 'double precision' ORDER BY ordinal_position LOOP
            EXECUTE format('ALTER TABLE %I ADD CONSTRAINT %I CHECK (%I > ''-Infinity'' AND %I < ''Infinity'')',
                           t, t || '_' || c || '_finite', c, c);
        END LOOP;
        IF compressed THEN
            EXECUTE format('ALTER TABLE %I SET (timescaledb.compress, timescaledb.compress_segmentby = ''symbol'', '
                           'timescaledb.compress_orderby = %L)', t, orderby ->> t);
        END IF;
    END LOOP;
END $$;
