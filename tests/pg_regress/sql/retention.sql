-- Retention: expired events are archived, then deleted after a grace period
-- with proof in audit.deletion_log; the trail still verifies.
SET timezone = 'UTC';
\set SHOW_CONTEXT never
SELECT category, keep, min_keep, max_keep FROM audit.retention_policies ORDER BY category;

CREATE TABLE ret_deal (id int PRIMARY KEY, stage text);
SELECT entity_type FROM audit.enable('ret_deal');
INSERT INTO ret_deal SELECT g, 'Lead' FROM generate_series(1, 30) g;
UPDATE ret_deal SET stage = 'Won' WHERE id <= 10;
SELECT audit.set_context(actor => 'ret_user', is_local => false);
SELECT audit.log_event('LOGIN');
SELECT audit.log_event('API_CALL', metadata => '{"path": "/v1/deals"}');
SELECT audit.clear_context();
SELECT audit.sync();
SELECT audit.seal();
SELECT count(*) AS events_before FROM audit.events \gset
SELECT audit.action_category(action) AS category, count(*) AS events
FROM audit.events GROUP BY 1 ORDER BY 1;

-- Two years and a day on: API calls (kept 1 year, then 90 days archived) are
-- archived and deleted, logins (kept 2 years) archived; nothing else moves.
SET audit.retention_batch_size = 1;  -- one stored row per batch: many batches, same result
SELECT category, to_archive, to_delete FROM audit.retention_preview(now() + interval '2 years 1 day');
SELECT * FROM audit.run_retention(now() + interval '2 years 1 day');
RESET audit.retention_batch_size;
SELECT actor, action FROM audit_archive.events ORDER BY id;
SELECT count(*) AS live_events, :events_before - count(*) AS removed FROM audit.events;
SELECT category, event_count, last_event_id - first_event_id + 1 AS id_span, event_ids = ARRAY[first_event_id] AS ids_listed,
       chain_block_id = (SELECT max(block_id) FROM audit.blocks) AS chain_head_recorded, method
FROM audit.deletion_log ORDER BY id;
SELECT action FROM audit.events e JOIN audit.deletion_log d ON e.id = ANY (d.event_ids);  -- gone
-- Archived events still verify, and deleted ones are not reported missing.
SELECT valid, events_checked = :events_before - 1 AS archived_checked, problems FROM audit.verify();
SELECT audit.get_event((SELECT first_event_id FROM audit.deletion_log));
SELECT action, actor FROM jsonb_to_record(audit.get_event((SELECT min(id) FROM audit_archive.events))) AS e(action text, actor text);
-- The archive is append-only too.
\set VERBOSITY terse
UPDATE audit_archive.event_chunks SET actor = 'x';
DELETE FROM audit_archive.event_chunks;
\set VERBOSITY default

-- Three years on, the archive partition holds nothing still kept: dropped whole.
SELECT * FROM audit.run_retention(now() + interval '3 years');
SELECT category, event_count, method FROM audit.deletion_log ORDER BY id;
SELECT count(*) AS archived FROM audit_archive.events;
SELECT valid, problems FROM audit.verify();
SELECT sum(archived + deleted) AS nothing_more FROM audit.run_retention(now() + interval '3 years');

-- The deletion log is append-only; only retention, run by an admin, deletes.
\set VERBOSITY terse
DELETE FROM audit.deletion_log;
UPDATE audit.deletion_log SET event_count = 0;
TRUNCATE audit.deletion_log;
\set VERBOSITY default
CREATE ROLE ret_clerk;
SET ROLE ret_clerk;
SET audit.maintenance = 'on';
SELECT * FROM audit.run_retention();
RESET ROLE;

-- Policies are set within their range, and every change is itself audited.
SELECT audit.set_context(actor => 'dpo', source => 'UI', is_local => false);
SELECT category, keep FROM audit.set_retention('login', '3 years');
SELECT category, keep FROM audit.set_retention('config', 'infinity');
SELECT audit.set_retention('api', '3 months');
SELECT audit.set_retention('login', 'infinity');
SELECT audit.set_retention('logins', '1 year');
SELECT audit.set_retention('api', '45 days');
SELECT audit.set_retention('api', 'soon');
SELECT audit.clear_context();
SELECT audit.sync();
SELECT actor, action, entity_type, metadata FROM audit.events WHERE entity_type = 'audit.retention_policies' ORDER BY id;
SELECT category, keep FROM audit.retention_policies WHERE category IN ('login', 'config') ORDER BY 1;
