-- Packing: consecutive events of one context (action, entity type, actor and
-- the rest of who and from where) share a stored row of audit.event_chunks;
-- each event keeps its own occurred_at, txid and statement_id.
SET timezone = 'UTC';
CREATE TABLE tasks (id int PRIMARY KEY, status text);
INSERT INTO tasks SELECT g, 'open' FROM generate_series(1, 9) g;
SELECT entity_type FROM audit.enable('tasks');
SELECT audit.sync();
SELECT max(id) AS base FROM audit.events \gset

-- One transaction: three single-row updates by ann, one by bob, one by ann again.
BEGIN;
SELECT audit.set_context(actor => 'ann');
UPDATE tasks SET status = 'doing' WHERE id = 1;
UPDATE tasks SET status = 'doing' WHERE id = 2;
UPDATE tasks SET status = 'done' WHERE id = 1;
SELECT audit.set_context(actor => 'bob');
UPDATE tasks SET status = 'doing' WHERE id = 3;
SELECT audit.set_context(actor => 'ann');
UPDATE tasks SET status = 'done' WHERE id = 2;
COMMIT;
SELECT audit.sync();
-- Five events in three stored rows: bob's update starts a new row, and so does ann's after it.
SELECT count(*) AS stored_rows, sum(event_count) AS events FROM audit.event_chunks WHERE id > :base;
SELECT id - :base AS first_event, event_count, actor, entity_ids,
       (SELECT array_agg(s - :base) FROM unnest(statement_ids) s) AS statement_ids,
       cardinality(occurred_ats) AS occurred_ats, txids
FROM audit.event_chunks WHERE id > :base ORDER BY id;
-- Read back one event per row: each is its own statement, at its own time, in the one transaction.
SELECT id - :base AS event, chunk_id - :base AS stored_row, actor, entity_id, changes,
       statement_id = id AS own_statement,
       occurred_at > lag(occurred_at) OVER (ORDER BY id) AS later_than_previous,
       txid = first_value(txid) OVER (ORDER BY id) AS same_transaction
FROM audit._event_rows WHERE id > :base ORDER BY id;

-- Several transactions stored by the worker in one batch share a row too, each
-- event keeping its transaction id. Another session (through dblink) holds a
-- lock the worker needs, so that the worker stores the three commits below together.
SELECT max(id) AS base FROM audit.events \gset
SELECT regress_hold_worker();
SELECT audit.set_context(actor => 'carol', is_local => false);
BEGIN;
UPDATE tasks SET status = 'doing' WHERE id = 4;
SELECT pg_current_xact_id() AS tx1 \gset
COMMIT;
BEGIN;
UPDATE tasks SET status = 'doing' WHERE id = 5;
SELECT pg_current_xact_id() AS tx2 \gset
COMMIT;
BEGIN;
UPDATE tasks SET status = 'doing' WHERE id = 6;
SELECT pg_current_xact_id() AS tx3 \gset
COMMIT;
SELECT audit.clear_context();
SELECT dblink_exec('holder', 'COMMIT');
SELECT dblink_disconnect('holder');
SELECT audit.sync();
SELECT count(*) AS stored_rows, sum(event_count) AS events, cardinality(max(txids)) AS txids,
       cardinality(max(statement_ids)) AS statement_ids, cardinality(max(occurred_ats)) AS occurred_ats
FROM audit.event_chunks WHERE id > :base;
SELECT id - :base AS event, chunk_id - :base AS stored_row, entity_id, statement_id = id AS own_statement,
       txid = (ARRAY[:'tx1', :'tx2', :'tx3']::xid8[])[id - :base] AS its_transaction
FROM audit._event_rows WHERE id > :base ORDER BY id;

-- A different action, or different metadata, starts a new row as well.
SELECT max(id) AS base FROM audit.events \gset
BEGIN;
SELECT audit.set_context(actor => 'dan');
UPDATE tasks SET status = 'done' WHERE id = 7;
DELETE FROM tasks WHERE id = 9;
UPDATE tasks SET status = 'done' WHERE id = 8;
SELECT audit.set_context(actor => 'dan', metadata => '{"ticket": "T-9"}');
UPDATE tasks SET status = 'open' WHERE id = 8;
COMMIT;
SELECT audit.sync();
SELECT id - :base AS first_event, event_count, actor, action, entity_ids, metadata
FROM audit.event_chunks WHERE id > :base ORDER BY id;
