-- What the trail shows after the day.
\pset footer off
\echo
\echo '== The trail (newest first) =='
SELECT id, to_char(occurred_at, 'HH24:MI:SS') AS at, actor, source, action, entity_type, entity_id
FROM audit.events ORDER BY id DESC LIMIT 25;

\echo
\echo '== Field-level changes to opportunities =='
SELECT event_id, actor, entity_id, field, old_value, new_value, source
FROM audit.field_changes WHERE entity_type = 'Opportunity' AND action = 'UPDATE'
ORDER BY event_id, field;

\echo
\echo '== History of one record: audit.history(''Opportunity'', ''opp_1'') =='
SELECT event_id, action, field, old_value, new_value, actor, actor_role, source, ip
FROM audit.history('Opportunity', 'opp_1') WHERE action <> 'INSERT';

\echo
\echo '== One user''s activity: audit.user_activity(''ann@acme.test'') =='
SELECT id, action, entity_type, entity_id, source FROM audit.user_activity('ann@acme.test');

\echo
\echo '== Events per actor =='
SELECT actor, count(*) AS events, string_agg(DISTINCT source, ', ') AS sources FROM audit.events GROUP BY actor ORDER BY 2 DESC;

\echo
\echo '== The bulk operation of the automation (one statement, shared statement_id) =='
SELECT statement_id, metadata->>'row_count' AS row_count, count(*) AS events
FROM audit.events WHERE actor = 'workflow:probability-model' GROUP BY 1, 2;

\echo
\echo '== Search: user:ann@acme.test action:UPDATE field:stage =='
SELECT id, actor, entity_id, changes FROM audit.search('user:ann@acme.test action:UPDATE field:stage');

\echo
\echo '== Masked column: the phone change is recorded without its values =='
SELECT id, actor, changes FROM audit.events WHERE entity_type = 'Contact' AND action = 'UPDATE';

\echo
\echo '== Tamper evidence: seal, verify, digest =='
SELECT count(*) AS blocks, sum(event_count) AS events_sealed FROM audit.seal();
SELECT valid, events_checked, blocks_checked, problems FROM audit.verify();
SELECT audit.digest();
