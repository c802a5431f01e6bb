-- Capture appends to the month's partition without the executor: indexes a DBA
-- adds are maintained (expression, partial, unique), what it cannot honour is
-- refused, and a partition with other bounds than its month never gets rows.
SET timezone = 'UTC';
\set VERBOSITY default
CREATE TABLE tickets (id int PRIMARY KEY, status text);
SELECT count(*) AS enabled FROM audit.enable('tickets');
SELECT format('events_%s', to_char(now() AT TIME ZONE 'UTC', 'YYYYMM')) AS month_name,
       format('audit.events_%s', to_char(now() AT TIME ZONE 'UTC', 'YYYYMM')) AS month_partition,
       format('audit.events_%s_occurred_at_brin', to_char(now() AT TIME ZONE 'UTC', 'YYYYMM')) AS month_brin \gset

-- An expression index and a partial index on the partition hold the new events.
CREATE INDEX storage_ticket_idx ON :month_partition ((metadata ->> 'ticket'));
CREATE INDEX storage_status_idx ON :month_partition ((changes -> 'status' ->> 'new')) WHERE entity_type = 'tickets';
SELECT audit.set_context(metadata => '{"ticket": "T-1"}', is_local => false);
INSERT INTO tickets VALUES (1, 'open');
UPDATE tickets SET status = 'closed' WHERE id = 1;
-- Read through the indexes only: the answers come from their entries.
CREATE FUNCTION pg_temp.plan_uses(query text, index_name text) RETURNS boolean LANGUAGE plpgsql AS $$
DECLARE line text;
BEGIN
    FOR line IN EXECUTE 'EXPLAIN (COSTS OFF) ' || query LOOP
        IF line LIKE '%' || index_name || '%' THEN RETURN true; END IF;
    END LOOP;
    RETURN false;
END $$;
SET enable_seqscan = off;
SET enable_bitmapscan = off;
SELECT action, entity_id FROM audit.events WHERE metadata ->> 'ticket' = 'T-1' ORDER BY action;
SELECT pg_temp.plan_uses($$SELECT action FROM audit.events WHERE metadata ->> 'ticket' = 'T-1'$$, 'storage_ticket_idx');
SELECT action FROM audit.events WHERE entity_type = 'tickets' AND changes -> 'status' ->> 'new' = 'closed';
SELECT pg_temp.plan_uses($$SELECT action FROM audit.events WHERE entity_type = 'tickets' AND changes -> 'status' ->> 'new' = 'closed'$$,
                         'storage_status_idx');
RESET enable_seqscan;
RESET enable_bitmapscan;
SELECT audit.clear_context();

-- A unique index is enforced on captured events like on any insert.
CREATE UNIQUE INDEX storage_session_idx ON :month_partition (session_id) WHERE session_id LIKE 'storage-%';
SELECT audit.set_context(session_id => 'storage-1', is_local => false);
UPDATE tickets SET status = 'reopened' WHERE id = 1;
UPDATE tickets SET status = 'closed' WHERE id = 1;
SELECT audit.clear_context();
SELECT status FROM tickets;
DROP INDEX audit.storage_session_idx;

-- Exclusion constraints are refused; once dropped, capture goes on.
ALTER TABLE :month_partition ADD CONSTRAINT storage_exclusion
    EXCLUDE USING btree (session_id WITH =) WHERE (session_id LIKE 'storage-%');
UPDATE tickets SET status = 'pending' WHERE id = 1;
ALTER TABLE :month_partition DROP CONSTRAINT storage_exclusion;
UPDATE tickets SET status = 'pending' WHERE id = 1;
DROP INDEX audit.storage_ticket_idx, audit.storage_status_idx;

-- Index access methods that keep state between inserts (GIN, BRIN) are given
-- it afresh for every write: an invalidation of the index alone (its options
-- changed) between two captures leaves nothing stale behind.
CREATE INDEX storage_changes_gin ON :month_partition USING gin (changes);
UPDATE tickets SET status = 'gin-1' WHERE id = 1;
ALTER INDEX audit.storage_changes_gin SET (fastupdate = off);
ALTER INDEX :month_brin SET (autosummarize = on);
UPDATE tickets SET status = 'gin-2' WHERE id = 1;
ALTER INDEX audit.storage_changes_gin SET (fastupdate = on);
UPDATE tickets SET status = 'gin-3' WHERE id = 1;
SET enable_seqscan = off;
SET enable_indexscan = off;
SELECT changes -> 'status' ->> 'new' AS status FROM audit.events
WHERE changes @> '{"status": {"old": "pending"}}' OR changes @> '{"status": {"old": "gin-1"}}'
   OR changes @> '{"status": {"old": "gin-2"}}' ORDER BY id;
SELECT pg_temp.plan_uses($$SELECT id FROM audit.events WHERE changes @> '{"status": {"old": "gin-1"}}'$$, 'storage_changes_gin');
SELECT count(*) AS captured_this_month FROM audit.events
WHERE occurred_at >= date_trunc('month', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC' AND entity_type = 'tickets';
RESET enable_seqscan;
RESET enable_indexscan;
DROP INDEX audit.storage_changes_gin;

-- A partition named after this month but bounded otherwise receives nothing.
SELECT date_trunc('month', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC' AS month_start \gset
ALTER TABLE audit.events DETACH PARTITION :month_partition;
ALTER TABLE :month_partition RENAME TO events_detached;
CREATE TABLE :month_partition PARTITION OF audit.events
    FOR VALUES FROM (:'month_start') TO (:'month_start'::timestamptz + interval '1 microsecond');
UPDATE tickets SET status = 'lost' WHERE id = 1;
SELECT status FROM tickets;
DROP TABLE :month_partition;
ALTER TABLE audit.events_detached RENAME TO :month_name;
ALTER TABLE audit.events ATTACH PARTITION :month_partition
    FOR VALUES FROM (:'month_start') TO (:'month_start'::timestamptz + interval '1 month');
UPDATE tickets SET status = 'done' WHERE id = 1;
SELECT action, changes, session_id, metadata FROM audit.events WHERE entity_type = 'tickets' ORDER BY id;
