-- Capture on a small CRM schema: field-level diffs, COPY, MERGE, rollback and
-- bulk statements. The worker stores events after their transaction commits,
-- numbered 1, 2, 3... in commit order; audit.sync() waits until it has.
CREATE EXTENSION audit;
SET timezone = 'UTC';

-- The worker starts serving this database within seconds of CREATE EXTENSION.
DO $$
BEGIN
    FOR i IN 1..300 LOOP
        EXIT WHEN (SELECT worker_running FROM audit.status());
        PERFORM pg_sleep(0.1);
    END LOOP;
END $$;
SELECT capture_ready, problem, worker_running, replication_slot ~ '^audit_[0-9]+$' AS slot_named
FROM audit.status();

-- For later files: holds the worker back until the caller commits dblink
-- connection 'holder' (another session locks the table every store writes,
-- then this waits until the worker is stuck on it, if it has anything to store).
CREATE EXTENSION dblink;
CREATE FUNCTION regress_hold_worker() RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    PERFORM dblink_connect('holder', format('dbname=%s host=%s port=%s', current_database(),
                                            current_setting('unix_socket_directories'), current_setting('port')));
    PERFORM dblink_exec('holder', 'BEGIN');
    PERFORM dblink_exec('holder', 'LOCK TABLE audit.materializer_state IN SHARE MODE');
    FOR i IN 1..300 LOOP
        EXIT WHEN EXISTS (SELECT FROM pg_locks WHERE relation = 'audit.materializer_state'::regclass AND NOT granted);
        PERFORM pg_sleep(0.05);
    END LOOP;
END $$;

CREATE TABLE accounts (id int PRIMARY KEY, name text NOT NULL, industry text);
CREATE TABLE opportunities (
    id text PRIMARY KEY,
    account_id int REFERENCES accounts,
    name text,
    stage text,
    amount numeric(12,2),
    close_date date,
    updated_at timestamptz DEFAULT now()
);
SELECT table_name, entity_type, key_columns, excluded_columns, masked_columns
FROM audit.enable('accounts', entity_name => 'Account');
SELECT table_name, entity_type, key_columns, excluded_columns
FROM audit.enable('opportunities', exclude_columns => ARRAY['updated_at'], entity_name => 'Opportunity');

SELECT audit.set_context(actor => 'ann@acme.test', actor_role => 'SALES_REP', source => 'UI', ip => '203.0.113.42', is_local => false);
INSERT INTO accounts VALUES (1, 'Globex', 'Manufacturing');
INSERT INTO opportunities (id, account_id, name, stage, amount, close_date)
VALUES ('opp_1', 1, 'Globex renewal', 'Qualification', 12000, '2026-12-31');
UPDATE opportunities SET stage = 'Proposal', amount = 15000 WHERE id = 'opp_1';
UPDATE opportunities SET stage = 'Proposal', updated_at = now() WHERE id = 'opp_1';  -- no captured change

-- COPY goes through the same statement-level capture.
SELECT audit.set_context(actor => 'importer', source => 'import', is_local => false);
COPY opportunities (id, account_id, name, stage, amount) FROM STDIN WITH (FORMAT csv);
opp_2,1,Globex expansion,Lead,5000
opp_3,1,"Globex, services",Lead,
\.

-- A rolled-back transaction leaves nothing behind, not even a gap in the ids.
BEGIN;
UPDATE opportunities SET stage = 'Closed Lost';
ROLLBACK;

-- MERGE is captured per action it takes.
-- Transaction-local context (the default) lasts until COMMIT.
BEGIN;
SELECT audit.set_context(actor => 'sync-bot', source => 'AUTOMATION');
MERGE INTO opportunities o
USING (VALUES ('opp_2', 'Negotiation'), ('opp_4', 'Lead')) AS s(id, stage) ON o.id = s.id
WHEN MATCHED THEN UPDATE SET stage = s.stage
WHEN NOT MATCHED THEN INSERT (id, account_id, stage) VALUES (s.id, 1, s.stage);
COMMIT;
SELECT audit.clear_context();

DELETE FROM opportunities WHERE id = 'opp_3';

-- Wait until the worker stored everything committed so far, then read the trail.
SELECT audit.sync();
SELECT id, statement_id, actor, actor_role, action, entity_type, entity_id, changes, ip, source, metadata
FROM audit.events ORDER BY id;

SELECT event_id, action, entity_id, field, old_value, new_value, actor
FROM audit.field_changes WHERE entity_type = 'Opportunity' AND field IN ('stage', 'amount')
ORDER BY event_id, field;

SELECT action, field, old_value, new_value, actor, source
FROM audit.history('Opportunity', 'opp_1');

SELECT action, entity_type, entity_id FROM audit.user_activity('importer') ORDER BY id;

SELECT table_name, entity_type, key_columns, excluded_columns, masked_columns, partitioned, capture_replicated
FROM audit.tracked_tables ORDER BY 1;

-- A bulk statement: its events share statement_id, the id of its first event,
-- and carry bulk_operation_id (= statement_id) and row_count in metadata.
CREATE TABLE leads (id int PRIMARY KEY, stage text);
INSERT INTO leads SELECT g, 'New' FROM generate_series(1, 2500) g;
SELECT entity_type FROM audit.enable('leads');
UPDATE leads SET stage = 'Qualified' WHERE id <= 2100;
UPDATE leads SET stage = 'Won' WHERE id = 2500;  -- a single-row statement
SELECT audit.sync();
SELECT min(statement_id) AS bulk_statement FROM audit.events WHERE entity_type = 'leads' AND action = 'UPDATE' \gset
SELECT count(*) AS events, count(DISTINCT statement_id) AS statements,
       min(id) = :bulk_statement AS first_id_is_statement_id, max(id) - min(id) + 1 AS consecutive_ids
FROM audit.events WHERE entity_type = 'leads' AND statement_id = :bulk_statement;
SELECT count(*) AS events_with_bulk_metadata
FROM audit.events
WHERE entity_type = 'leads' AND (metadata->>'bulk_operation_id')::bigint = :bulk_statement
  AND (metadata->>'row_count')::int = 2100;
SELECT changes FROM audit.events WHERE entity_type = 'leads' AND entity_id = '2100';
-- The single-row statement is its own statement and carries no bulk metadata.
SELECT id = statement_id AS own_statement, metadata FROM audit.events WHERE entity_type = 'leads' AND entity_id = '2500';
-- The 2100 events are stored in 21 rows of audit.event_chunks, 100 events each.
SELECT count(*) AS stored_rows, sum(event_count) AS events, min(event_count) AS smallest, max(event_count) AS largest,
       bool_and(statement_ids IS NULL) AS one_statement_per_row
FROM audit.event_chunks WHERE entity_type = 'leads' AND statement_id = :bulk_statement;
