-- Capture on a small CRM schema: field-level diffs, COPY, MERGE, rollback.
CREATE EXTENSION audit;
SET timezone = 'UTC';

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

-- A rolled-back transaction leaves nothing behind.
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

SELECT id, actor, actor_role, action, entity_type, entity_id, changes, ip, source, metadata
FROM audit.events ORDER BY id;

SELECT event_id, action, entity_id, field, old_value, new_value, actor
FROM audit.field_changes WHERE entity_type = 'Opportunity' AND field IN ('stage', 'amount')
ORDER BY event_id, field;

SELECT action, field, old_value, new_value, actor, source
FROM audit.history('Opportunity', 'opp_1');

SELECT action, entity_type, entity_id FROM audit.user_activity('importer') ORDER BY id;

SELECT table_name, entity_type, key_columns, excluded_columns, masked_columns, partitioned, capture_replicated
FROM audit.tracked_tables ORDER BY 1;
