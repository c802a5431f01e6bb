-- Storage: the worker appends rows to the month's partition of
-- audit.event_chunks without the executor. Indexes a DBA adds are maintained
-- (expression, partial, GIN, BRIN, also after they change); what it cannot
-- honour stops the worker, without losing anything, until it is removed.
SET timezone = 'UTC';
\set VERBOSITY default
\set SHOW_CONTEXT never
CREATE TABLE tickets (id int PRIMARY KEY, status text);
SELECT count(*) AS enabled FROM audit.enable('tickets');
SELECT format('event_chunks_%s', to_char(now() AT TIME ZONE 'UTC', 'YYYYMM')) AS month_name,
       format('audit.event_chunks_%s', to_char(now() AT TIME ZONE 'UTC', 'YYYYMM')) AS month_partition,
       format('audit.event_chunks_%s_occurred_at_brin', to_char(now() AT TIME ZONE 'UTC', 'YYYYMM')) AS month_brin \gset
CREATE FUNCTION pg_temp.plan_uses(query text, index_name text) RETURNS boolean LANGUAGE plpgsql AS $$
DECLARE line text;
BEGIN
    FOR line IN EXECUTE 'EXPLAIN (COSTS OFF) ' || query LOOP
        IF line LIKE '%' || index_name || '%' THEN RETURN true; END IF;
    END LOOP;
    RETURN false;
END $$;
-- Whether the worker stores what was committed within `seconds` (false while it cannot).
CREATE FUNCTION pg_temp.stored_within(seconds int) RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN
    FOR i IN 1..seconds * 2 LOOP
        BEGIN
            IF audit.sync(500) THEN RETURN true; END IF;
        EXCEPTION WHEN object_not_in_prerequisite_state THEN  -- the worker is restarting
            PERFORM pg_sleep(0.5);
        END;
    END LOOP;
    RETURN false;
END $$;

-- An expression index and a partial index on the partition hold the new rows.
CREATE INDEX storage_ticket_idx ON :month_partition ((metadata ->> 'ticket'));
CREATE INDEX storage_status_idx ON :month_partition ((changes[1] -> 'status' ->> 'new'))
    WHERE entity_type = 'tickets' AND event_count = 1;
SELECT audit.set_context(metadata => '{"ticket": "T-1"}', is_local => false);
INSERT INTO tickets VALUES (1, 'open');
UPDATE tickets SET status = 'closed' WHERE id = 1;
SELECT audit.clear_context();
SELECT audit.sync();
-- Read through the indexes: the answers come from their entries.
SET enable_seqscan = off;
SET enable_bitmapscan = off;
SELECT action, entity_id FROM audit.events WHERE metadata ->> 'ticket' = 'T-1' ORDER BY action;
SELECT pg_temp.plan_uses($$SELECT action FROM audit.events WHERE metadata ->> 'ticket' = 'T-1'$$, 'storage_ticket_idx');
SELECT action FROM audit.event_chunks
WHERE entity_type = 'tickets' AND event_count = 1 AND changes[1] -> 'status' ->> 'new' = 'closed';
SELECT pg_temp.plan_uses($$SELECT action FROM audit.event_chunks
    WHERE entity_type = 'tickets' AND event_count = 1 AND changes[1] -> 'status' ->> 'new' = 'closed'$$, 'storage_status_idx');
RESET enable_seqscan;
RESET enable_bitmapscan;
DROP INDEX audit.storage_ticket_idx, audit.storage_status_idx;

-- Index access methods that keep state between inserts (GIN, BRIN) are given
-- it afresh for every write: an invalidation of the index alone (its options
-- changed) between two stores leaves nothing stale behind.
CREATE INDEX storage_metadata_gin ON :month_partition USING gin (metadata);
SELECT audit.set_context(metadata => '{"step": "gin-1"}', is_local => false);
UPDATE tickets SET status = 'gin-1' WHERE id = 1;
SELECT audit.sync();
ALTER INDEX audit.storage_metadata_gin SET (fastupdate = off);
ALTER INDEX :month_brin SET (autosummarize = on);
SELECT audit.set_context(metadata => '{"step": "gin-2"}', is_local => false);
UPDATE tickets SET status = 'gin-2' WHERE id = 1;
SELECT audit.sync();
ALTER INDEX audit.storage_metadata_gin SET (fastupdate = on);
SELECT audit.set_context(metadata => '{"step": "gin-3"}', is_local => false);
UPDATE tickets SET status = 'gin-3' WHERE id = 1;
SELECT audit.clear_context();
SELECT audit.sync();
SET enable_seqscan = off;
SET enable_indexscan = off;
SELECT metadata ->> 'step' AS step, changes -> 'status' ->> 'new' AS status FROM audit.events
WHERE metadata @> '{"step": "gin-1"}' OR metadata @> '{"step": "gin-2"}' OR metadata @> '{"step": "gin-3"}' ORDER BY id;
SELECT pg_temp.plan_uses($$SELECT id FROM audit.events WHERE metadata @> '{"step": "gin-2"}'$$, 'storage_metadata_gin');
SELECT count(*) AS stored_this_month FROM audit.event_chunks
WHERE occurred_at >= date_trunc('month', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC' AND entity_type = 'tickets';
SELECT pg_temp.plan_uses($$SELECT count(*) FROM audit.event_chunks
    WHERE occurred_at >= date_trunc('month', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC' AND entity_type = 'tickets'$$,
    'occurred_at_brin');
RESET enable_seqscan;
RESET enable_indexscan;
DROP INDEX audit.storage_metadata_gin;

-- An exclusion constraint cannot be honoured without the executor: the worker
-- stops storing (the change stays committed, and pending for its session),
-- and stores it once the constraint is gone.
ALTER TABLE :month_partition ADD CONSTRAINT storage_exclusion
    EXCLUDE USING btree (session_id WITH =) WHERE (session_id LIKE 'storage-%');
UPDATE tickets SET status = 'excluded' WHERE id = 1;
SELECT pg_temp.stored_within(1);
SELECT id IS NULL AS pending, changes FROM audit.events WHERE entity_type = 'tickets' AND id IS NULL;
-- audit.status() tells why, while the worker retries.
DO $$
BEGIN
    FOR i IN 1..100 LOOP
        EXIT WHEN (SELECT problem IS NOT NULL FROM audit.status());
        PERFORM pg_sleep(0.1);
    END LOOP;
END $$;
SELECT capture_ready, problem, hint FROM audit.status();
ALTER TABLE :month_partition DROP CONSTRAINT storage_exclusion;
SELECT pg_temp.stored_within(60);
SELECT problem IS NULL AS problem_gone FROM audit.status();
SELECT count(*) AS pending FROM audit.events WHERE id IS NULL;
SELECT changes FROM audit.events WHERE entity_type = 'tickets' ORDER BY id DESC LIMIT 1;

-- A partition named after this month but bounded otherwise receives nothing:
-- the worker waits for a partition of exactly this month.
SELECT date_trunc('month', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC' AS month_start \gset
ALTER TABLE audit.event_chunks DETACH PARTITION :month_partition;
ALTER TABLE :month_partition RENAME TO event_chunks_detached;
CREATE TABLE :month_partition PARTITION OF audit.event_chunks
    FOR VALUES FROM (:'month_start') TO (:'month_start'::timestamptz + interval '1 microsecond');
UPDATE tickets SET status = 'lost' WHERE id = 1;
SELECT pg_temp.stored_within(1);
SELECT count(*) AS rows_in_wrong_partition FROM :month_partition;
DROP TABLE :month_partition;
ALTER TABLE audit.event_chunks_detached RENAME TO :month_name;
ALTER TABLE audit.event_chunks ATTACH PARTITION :month_partition
    FOR VALUES FROM (:'month_start') TO (:'month_start'::timestamptz + interval '1 month');
SELECT pg_temp.stored_within(60);
UPDATE tickets SET status = 'done' WHERE id = 1;
SELECT audit.sync();
SELECT action, changes, metadata FROM audit.events WHERE entity_type = 'tickets' ORDER BY id;

-- Ids increase in commit order; occurred_at is when the statement started,
-- to the microsecond, whatever the session's time zone; txid is the
-- transaction's.
SET timezone = 'America/New_York';
BEGIN;
SELECT audit.log_event('LOGIN'), pg_current_xact_id() AS login_tx,
       (extract(epoch FROM statement_timestamp()) * 1000000)::int8 AS login_at \gset
SELECT audit.log_event('LOGOUT'), (extract(epoch FROM statement_timestamp()) * 1000000)::int8 AS logout_at \gset
COMMIT;
SET timezone = 'UTC';
SELECT audit.sync();
SELECT action, id - lag(id) OVER (ORDER BY id) AS after_previous, txid = :'login_tx' AS its_transaction,
       (extract(epoch FROM occurred_at) * 1000000)::int8 = CASE action WHEN 'LOGIN' THEN :login_at ELSE :logout_at END
           AS statement_start,
       octet_length(hash) AS hash_bytes, statement_id IS NULL AS application_event
FROM audit.events WHERE action IN ('LOGIN', 'LOGOUT') AND txid = :'login_tx' ORDER BY id;

-- Partitions are made ahead, up to 120 months.
SELECT audit.ensure_partitions(now(), 500);
