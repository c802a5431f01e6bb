-- What the trail shows after the day: readable tables, one per question.
\set QUIET on
\x off
\pset footer off
\pset null '-'

-- Capture writes each statement's events into the WAL; the background worker stores
-- them in commit order within milliseconds. audit.sync() waits until it has caught up
-- with everything committed so far, so this session sees the whole day.
SELECT audit.sync() AS caught_up \gset

\echo '== 1. The trail, newest first (audit.events, last 20) =='
SELECT id, to_char(occurred_at, 'HH24:MI:SS.MS') AS occurred_at, actor, source, action, entity_type, entity_id
FROM audit.events
ORDER BY id DESC
LIMIT 20;

\echo '== 2. Field-level changes to opportunities (audit.field_changes) =='
SELECT event_id, actor, entity_type, entity_id, field,
       left(old_value, 24) AS old_value, left(new_value, 24) AS new_value, source
FROM audit.field_changes
WHERE entity_type = 'Opportunity' AND action = 'UPDATE'
ORDER BY event_id, field;

\echo '== 3. One record''s history: audit.history(''Opportunity'', ''opp_1''), every column =='
SELECT event_id, to_char(occurred_at, 'HH24:MI:SS.MS') AS occurred_at, action, field,
       left(old_value, 16) AS old_value, left(new_value, 16) AS new_value,
       actor, actor_role, source, ip, session_id, statement_id
FROM audit.history('Opportunity', 'opp_1');

\echo '== 4. One user''s activity: audit.user_activity(''ann@acme.test'') =='
SELECT id, to_char(occurred_at, 'HH24:MI:SS.MS') AS occurred_at, action, entity_type, entity_id, source
FROM audit.user_activity('ann@acme.test');

\echo '== 5. Events per actor =='
SELECT actor, count(*) AS events,
       string_agg(DISTINCT source, ', ') AS sources,
       string_agg(DISTINCT action, ', ') AS actions
FROM audit.events
GROUP BY actor
ORDER BY count(*) DESC, actor;

\echo '== 6. The bulk operation: one UPDATE by the scoring workflow, events sharing statement_id =='
SELECT statement_id, metadata->>'row_count' AS row_count, id AS event_id, entity_id,
       changes->'probability'->>'old' AS old_probability, changes->'probability'->>'new' AS new_probability,
       metadata->>'run_id' AS run_id
FROM audit.events
WHERE statement_id IN (SELECT statement_id FROM audit.events
                       WHERE source = 'AUTOMATION' AND (metadata->>'row_count')::int > 1)
ORDER BY id;

\echo '== 7. The CSV import (COPY): one statement, one INSERT event per row =='
SELECT statement_id, metadata->>'row_count' AS row_count, id AS event_id, entity_id,
       changes->'company'->>'new' AS company, metadata->>'file' AS file
FROM audit.events
WHERE source = 'IMPORT'
ORDER BY id;

\echo '== 8. The AI assistant''s change, with its conversation =='
SELECT id, actor, entity_id, metadata->>'conversation_id' AS conversation_id, metadata->>'model' AS model,
       metadata->>'on_behalf_of' AS on_behalf_of, (SELECT string_agg(k, ', ' ORDER BY k) FROM jsonb_object_keys(changes) k) AS fields
FROM audit.events
WHERE source = 'AI';

\echo '== 9. Masked column: the API changed contacts.phone; the trail keeps that it changed, not the values =='
SELECT event_id, actor, entity_id, field, old_value, new_value, masked, source
FROM audit.field_changes
WHERE entity_type = 'Contact'
ORDER BY event_id, field;

\echo '== 10. Application events (audit.log_event) =='
SELECT id, actor, action, entity_type, entity_id, ip, left(metadata::text, 60) AS metadata
FROM audit.events
WHERE changes IS NULL
ORDER BY id;

\echo '== 11. Tamper evidence: seal what the background worker has not sealed yet, then verify the hash chain =='
SELECT audit.seal() AS sealed \gset
SELECT valid, events_checked, blocks_checked, unsealed_events, problems FROM audit.verify();
