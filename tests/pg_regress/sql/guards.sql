-- The trail is append-only; bad input is refused with a clear error.
SET timezone = 'UTC';
\set VERBOSITY default
SELECT audit.sync();
SELECT count(*) AS events_before FROM audit.events \gset

-- Stored rows can be neither changed nor removed, through the table or a partition.
UPDATE audit.event_chunks SET actor = 'mallory';
DELETE FROM audit.event_chunks;
TRUNCATE audit.event_chunks;
SELECT format('audit.event_chunks_%s', to_char(now() AT TIME ZONE 'UTC', 'YYYYMM')) AS month_partition \gset
DELETE FROM :month_partition;
TRUNCATE :month_partition;
TRUNCATE audit.blocks;
-- audit.events is a view over the stored rows: there is nothing to write through it.
UPDATE audit.events SET actor = 'mallory';

-- Application roles write only through capture and audit.log_event.
CREATE ROLE guard_app;
CREATE TABLE guard_deals (id int PRIMARY KEY, stage text);
GRANT ALL ON guard_deals TO guard_app;
SELECT entity_type FROM audit.enable('guard_deals');
SET ROLE guard_app;
INSERT INTO guard_deals VALUES (1, 'Lead');
UPDATE guard_deals SET stage = 'Won';
SELECT audit.log_event('LOGIN');
SELECT count(*) FROM audit.events;
SELECT count(*) FROM audit.event_chunks;
INSERT INTO audit.event_chunks (id, block_id, occurred_at, txid, event_count, action, entity_ids, changes)
VALUES (1000, 1, now(), '1', 1, 'LOGIN', '{NULL}', '{NULL}');
SELECT * FROM audit.history('guard_deals', '1');
SELECT audit.enable('guard_deals');
RESET ROLE;
SELECT audit.sync();
SELECT actor, action, entity_type, entity_id FROM audit.events WHERE actor = 'guard_app' ORDER BY id;
-- A reader (audit_reader) reads the trail.
CREATE ROLE guard_analyst IN ROLE audit_reader;
SET ROLE guard_analyst;
SELECT action, field, old_value, new_value, actor FROM audit.history('guard_deals', '1');
UPDATE audit.event_chunks SET actor = 'x';
RESET ROLE;

-- Bad input.
SELECT audit.enable('no_such_table');
CREATE VIEW open_deals AS SELECT * FROM opportunities WHERE stage <> 'Closed Won';
SELECT audit.enable('open_deals');
CREATE TABLE notes (body text);
SELECT audit.enable('notes');
SELECT audit.enable('opportunities', mask_columns => ARRAY['nope']);
SELECT audit.set_context(source => 'carrier pigeon');
SELECT audit.log_event('UPDATE');
SELECT audit.log_event('drop table');
SELECT audit.log_event('LOGIN', metadata => '[1, 2]');
SELECT audit.sync();
-- Refusals wrote nothing: only guard_app's three events and the enable were added.
SELECT count(*) - :events_before AS events_added FROM audit.events;

-- The trail is UTF-8: a database of another encoding is refused, with nothing created.
SELECT current_database() AS regress_db \gset
CREATE DATABASE audit_latin1 TEMPLATE template0 ENCODING 'LATIN1' LC_COLLATE 'C' LC_CTYPE 'C';
\c audit_latin1
CREATE EXTENSION audit;
SELECT :'LAST_ERROR_SQLSTATE' AS sqlstate;
SELECT count(*) AS audit_schemas FROM pg_namespace WHERE nspname = 'audit';
\c :regress_db
DROP DATABASE audit_latin1;
