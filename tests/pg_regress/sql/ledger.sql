-- The hash chain: seal, verify, digests, and tampering found precisely.
SET timezone = 'UTC';
CREATE FUNCTION pg_temp.problems() RETURNS TABLE (kind text, event_id bigint, block_id bigint, detail text)
LANGUAGE sql AS $$
    SELECT p->>'kind', (p->>'event_id')::bigint, (p->>'block_id')::bigint, p->>'detail'
    FROM audit.verify() v, jsonb_array_elements(v.problems) p
$$;

-- In this suite the worker seals only when asked (audit.seal_interval = 1h):
-- what the earlier files stored is checked against nothing yet.
SELECT audit.sync();
SELECT count(*) AS stored_events FROM audit.events \gset
SELECT valid, events_checked = :stored_events AS all_checked, unsealed_events = :stored_events AS all_unsealed,
       blocks_checked
FROM audit.verify();

-- Seal everything stored: one block seals every id from its first to its last.
SELECT audit.seal();
SELECT block_id, first_event_id, last_event_id = :stored_events AS seals_the_last_event,
       event_count = last_event_id - first_event_id + 1 AS every_id_sealed,
       octet_length(leaf_hashes) = 32 * event_count AS one_hash_per_event,
       prev_hash = decode(repeat('00', 32), 'hex') AS links_to_genesis,
       lsn_lo <= lsn_hi AS wal_span_ordered
FROM audit.blocks;
SELECT audit.seal();  -- nothing new: no empty block
SELECT count(*) AS blocks FROM audit.blocks;
SELECT valid, events_checked = :stored_events AS all_checked, unsealed_events, blocks_checked FROM audit.verify();
-- Every stored event names the block that seals it; its hash is what the block sealed.
SELECT count(*) FILTER (WHERE block_id = 1) AS in_block_1, count(*) FILTER (WHERE octet_length(hash) = 32) AS hashed
FROM audit.events;

-- A digest to keep outside the database.
SELECT audit.digest() AS digest \gset
SELECT (:'digest'::jsonb) ? 'block_hash' AS has_hash, (:'digest'::jsonb)->>'block_id' AS block_id,
       ((:'digest'::jsonb)->>'events_sealed')::int = :stored_events AS counts_every_event;
SELECT valid, detail FROM audit.verify_digest(:'digest');

-- More activity: a new event stays unsealed until the next seal.
UPDATE opportunities SET amount = 16000 WHERE id = 'opp_1';
SELECT audit.sync();
SELECT valid, unsealed_events FROM audit.verify();
SELECT audit.seal();
SELECT block_id, event_count, prev_hash = (SELECT block_hash FROM audit.blocks WHERE block_id = 1) AS links_to_block_1
FROM audit.blocks WHERE block_id = 2;
SELECT valid, unsealed_events, blocks_checked FROM audit.verify();
SELECT valid, detail FROM audit.verify_digest(:'digest');  -- an older digest still holds

-- A stored event changed before it is sealed: the worker seals the hash it
-- stored, so the change shows once the block is sealed.
UPDATE opportunities SET stage = 'Negotiation' WHERE id = 'opp_1';
SELECT audit.sync();
SELECT max(id) AS unsealed_event FROM audit.events \gset
CREATE TEMP TABLE unsealed_row AS SELECT * FROM audit.event_chunks WHERE id = :unsealed_event;
SET session_replication_role = replica;  -- a superuser switches the guards off
UPDATE audit.event_chunks SET changes = ARRAY['{"stage": {"old": "Proposal", "new": "Closed Won"}}'::jsonb]
WHERE id = :unsealed_event;
SET session_replication_role = origin;
SELECT valid, unsealed_events FROM audit.verify();  -- nothing to compare with yet
SELECT audit.seal();
SELECT kind, event_id = :unsealed_event AS the_changed_event, block_id, detail FROM pg_temp.problems();
-- Put it back.
SET session_replication_role = replica;
DELETE FROM audit.event_chunks WHERE id = :unsealed_event;
INSERT INTO audit.event_chunks SELECT * FROM unsealed_row;
SET session_replication_role = origin;
SELECT valid, blocks_checked, unsealed_events FROM audit.verify();

-- Tampering with sealed events, each way. The events of capture.sql are
-- stored one per row, except the COPY's two (events 6 and 7) which share a row.
SELECT id, event_count, entity_ids FROM audit.event_chunks WHERE id <= 10 ORDER BY id;
CREATE TEMP TABLE saved_chunks AS SELECT * FROM audit.event_chunks;
CREATE TEMP TABLE saved_blocks AS SELECT * FROM audit.blocks;
SET session_replication_role = replica;
-- modified: event 5's amount
UPDATE audit.event_chunks SET changes[1] = jsonb_set(changes[1], '{amount,new}', '"99000.00"') WHERE id = 5;
-- reordered: events 6 and 7 swapped within their row
UPDATE audit.event_chunks SET entity_ids = ARRAY[entity_ids[2], entity_ids[1]], changes = ARRAY[changes[2], changes[1]]
WHERE id = 6;
-- missing: event 8's row deleted
DELETE FROM audit.event_chunks WHERE id = 8;
-- inserted: a forged event stored as sealed by block 1, and one naming a block that does not exist
INSERT INTO audit.event_chunks SELECT 100000, 1, occurred_at, txid, statement_id, event_count, occurred_until, occurred_ats,
       txids, statement_ids, 'mallory', actor_role, action, entity_type, ip, user_agent, session_id, source, org_id,
       metadata, entity_ids, changes
FROM audit.event_chunks WHERE id = 9;
INSERT INTO audit.event_chunks SELECT 100001, 99, occurred_at, txid, statement_id, event_count, occurred_until, occurred_ats,
       txids, statement_ids, 'mallory', actor_role, action, entity_type, ip, user_agent, session_id, source, org_id,
       metadata, entity_ids, changes
FROM audit.event_chunks WHERE id = 9;
SET session_replication_role = origin;
SELECT valid FROM audit.verify();
SELECT * FROM pg_temp.problems();
SELECT valid, detail FROM audit.verify_digest(:'digest');
SELECT valid, blocks_checked, jsonb_array_length(problems) AS problems FROM audit.verify(2, 2);

-- Tampering with the chain itself.
SET session_replication_role = replica;
DELETE FROM audit.event_chunks;
INSERT INTO audit.event_chunks SELECT * FROM saved_chunks;
UPDATE audit.blocks SET event_count = event_count + 1 WHERE block_id = 2;
UPDATE audit.blocks SET prev_hash = (SELECT block_hash FROM audit.blocks WHERE block_id = 1) WHERE block_id = 3;
SET session_replication_role = origin;
SELECT * FROM pg_temp.problems();
SELECT valid, detail FROM audit.verify_digest(:'digest');

-- Restored, the trail verifies again.
SET session_replication_role = replica;
DELETE FROM audit.blocks;
INSERT INTO audit.blocks SELECT * FROM saved_blocks;
SET session_replication_role = origin;
SELECT valid, events_checked = :stored_events + 2 AS all_checked, blocks_checked, unsealed_events, problems
FROM audit.verify();
SELECT valid, detail FROM audit.verify_digest(:'digest');

-- Bad input.
SELECT * FROM audit.verify(5, 2);
SELECT * FROM audit.verify_digest('{"hello": 1}');
UPDATE audit.blocks SET event_count = 0;
