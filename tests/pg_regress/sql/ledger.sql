-- The hash chain: seal, verify, digests, and tampering found precisely.
SET timezone = 'UTC';
-- Seal everything committed so far (earlier files' events).
SELECT count(*) > 0 AS sealed_blocks, sum(event_count) AS sealed_events FROM audit.seal();
SELECT * FROM audit.seal();  -- nothing new
SELECT valid, events_checked, blocks_checked, unsealed_events, problems FROM audit.verify();

-- A digest to keep outside the database.
SELECT audit.digest() AS digest \gset
SELECT (:'digest'::jsonb) ? 'block_hash' AS has_hash, (:'digest'::jsonb)->>'events_sealed' AS events_sealed;
SELECT valid, detail FROM audit.verify_digest(:'digest');

-- More activity: a new event stays unsealed until the next seal.
UPDATE opportunities SET amount = 16000 WHERE id = 'opp_1';
SELECT valid, unsealed_events FROM audit.verify();
SELECT block_id, event_count FROM audit.seal();
SELECT valid, unsealed_events, blocks_checked FROM audit.verify();
SELECT valid, detail FROM audit.verify_digest(:'digest');  -- an older digest still holds

-- An unsealed event is checked against its own hash.
UPDATE opportunities SET stage = 'Negotiation' WHERE id = 'opp_1';
SET session_replication_role = replica;  -- a superuser switches the guards off
UPDATE audit.events SET changes = '{"stage": {"old": "Proposal", "new": "Closed Won"}}'
WHERE id = (SELECT max(id) FROM audit.events);
SET session_replication_role = origin;
SELECT valid, unsealed_events, jsonb_pretty(problems) FROM audit.verify();

-- Tampering with sealed events, each way.
SET session_replication_role = replica;
UPDATE audit.events SET changes = jsonb_set(changes, '{amount,new}', '"99000.00"') WHERE id = 5;   -- modified
UPDATE audit.events SET hash = (SELECT hash FROM audit.events WHERE id = 4) WHERE id = 3;         -- hash rewritten
DELETE FROM audit.events WHERE id = 7;                                                            -- missing
UPDATE audit.events SET id = CASE id WHEN 11 THEN 12 ELSE 11 END WHERE id IN (11, 12);            -- reordered
INSERT INTO audit.events SELECT 9, occurred_at, txid, statement_id, 'mallory', actor_role, action, entity_type,
       entity_id, changes, ip, user_agent, session_id, source, org_id, metadata, hash
FROM audit.events WHERE id = 6;                                                                   -- inserted
SET session_replication_role = origin;
SELECT valid, jsonb_pretty(problems) FROM audit.verify();
SELECT valid, detail FROM audit.verify_digest(:'digest');
SELECT valid, blocks_checked, jsonb_array_length(problems) AS problems FROM audit.verify(2, 2);

-- Tampering with the chain itself.
SET session_replication_role = replica;
UPDATE audit.blocks SET event_count = event_count + 1 WHERE block_id = 2;
SET session_replication_role = origin;
SELECT p->>'kind' AS kind, p->>'block_id' AS block_id, p->>'detail' AS detail
FROM audit.verify() v, jsonb_array_elements(v.problems) p WHERE p->>'event_id' IS NULL;
SELECT valid, detail FROM audit.verify_digest(:'digest');

-- Bad input.
SELECT * FROM audit.verify(5, 2);
SELECT * FROM audit.verify_digest('{"hello": 1}');
UPDATE audit.blocks SET event_count = 0;
