-- Read your writes: a session sees its own events before the worker has
-- stored them, as pending rows without id, statement_id, hash or block_id.
-- Once stored (audit.sync() waits for that) they have all of these.
SET timezone = 'UTC';
CREATE TABLE notes_rw (id int PRIMARY KEY, body text);
SELECT entity_type FROM audit.enable('notes_rw');
SELECT audit.sync();
SELECT max(id) AS base FROM audit.events \gset

-- Inside a transaction: its events are there at once, pending.
BEGIN;
SELECT audit.set_context(actor => 'vic');
INSERT INTO notes_rw VALUES (1, 'draft'), (2, 'draft');
UPDATE notes_rw SET body = 'final' WHERE id = 1;
SELECT audit.log_event('NOTE_SHARED', 'notes_rw', '1');
SELECT id, statement_id, hash, block_id, actor, action, entity_id, changes, metadata
FROM audit.events WHERE entity_type = 'notes_rw' ORDER BY occurred_at, entity_id;
SELECT event_id, action, field, old_value, new_value, actor FROM audit.history('notes_rw', '1') ORDER BY occurred_at, field;
SELECT count(*) AS pending_rows, sum(event_count) AS pending_events FROM audit.chunks WHERE id IS NULL;
-- A savepoint rolled back takes its events with it.
SAVEPOINT before_delete;
DELETE FROM notes_rw WHERE id = 2;
SELECT count(*) AS with_delete FROM audit.events WHERE entity_type = 'notes_rw' AND id IS NULL;
ROLLBACK TO SAVEPOINT before_delete;
SELECT count(*) AS without_delete FROM audit.events WHERE entity_type = 'notes_rw' AND id IS NULL;
-- Nothing is stored before the transaction commits.
SELECT audit.sync();
SELECT count(*) AS stored FROM audit.event_chunks WHERE id > :base;

-- Committed but not stored yet (the worker is held up by a lock that another
-- session, through dblink, holds): still pending for this session, and not
-- there at all for the other one.
SELECT regress_hold_worker();
COMMIT;
SELECT audit.sync(200) AS stored_within_200ms;
SELECT count(*) AS pending, count(id) AS with_id FROM audit.events WHERE entity_type = 'notes_rw';
SELECT n AS seen_by_the_other_session
FROM dblink('holder', $$SELECT count(*) FROM audit.events WHERE entity_type = 'notes_rw'$$) AS t(n bigint);
SELECT dblink_exec('holder', 'COMMIT');

-- Stored: numbered in commit order, each event once, seen by every session.
SELECT audit.sync();
SELECT n AS seen_by_the_other_session
FROM dblink('holder', $$SELECT count(*) FROM audit.events WHERE entity_type = 'notes_rw'$$) AS t(n bigint);
SELECT dblink_disconnect('holder');
SELECT id - :base AS n, statement_id - :base AS statement, octet_length(hash) AS hash_bytes,
       block_id = (SELECT max(block_id) FROM audit.blocks) + 1 AS in_the_open_block,
       actor, action, entity_id, metadata
FROM audit.events WHERE entity_type = 'notes_rw' ORDER BY id;
SELECT count(*) AS pending FROM audit.chunks WHERE id IS NULL;
-- Sealed: the block now exists and verifies.
SELECT audit.seal();
SELECT count(*) FILTER (WHERE e.block_id = b.block_id) AS sealed_by_their_block
FROM audit.events e LEFT JOIN audit.blocks b ON b.block_id = e.block_id WHERE e.entity_type = 'notes_rw';
SELECT valid, unsealed_events FROM audit.verify();

-- A rolled-back transaction's pending events disappear with it.
BEGIN;
INSERT INTO notes_rw VALUES (3, 'scratch');
SELECT count(*) AS pending FROM audit.events WHERE entity_type = 'notes_rw' AND id IS NULL;
ROLLBACK;
SELECT count(*) AS pending FROM audit.events WHERE entity_type = 'notes_rw' AND id IS NULL;
SELECT audit.sync();
SELECT count(*) AS stored FROM audit.events WHERE entity_type = 'notes_rw' AND entity_id = '3';
