-- Searching the trail from psql: syntax, pages, the query API, saved filters, export.
SET timezone = 'UTC';
SELECT id, actor, action, entity_type, entity_id FROM audit.search('entity:Opportunity action:UPDATE field:stage');
SELECT id, actor, action, entity_id FROM audit.search('user:ann* -action:INSERT');
SELECT id, actor, changes FROM audit.search('field:stage old_value:Proposal');
SELECT id, action, entity_id FROM audit.search('"Globex, services"');
SELECT id, actor, ip FROM audit.search('ip:203.0.113.0/24 date:today', max_rows => 3);
SELECT id, actor FROM audit.search('ip:203.0.113.0/24 date:today', max_rows => 3, cursor => '3');
SELECT id, action FROM audit.search('source:import source:automation');
\echo the SQL a search runs, with its values as parameters
SELECT audit.explain_search('user:sales.admin action:UPDATE entity:Opportunity field:stage old_value:Qualification ip:203.0.113.0/24 date:>2026-05-01');

-- Mistakes are explained, with where and how to fix them.
SELECT * FROM audit.search('usr:ann');
SELECT * FROM audit.search('date:2026-02-30');
SELECT * FROM audit.search('ip:203.0.113.7/24');
SELECT * FROM audit.search('old_value:"Closed Won');
SELECT * FROM audit.search('source:fax');

-- The query API, as PostgREST would expose it.
SELECT jsonb_path_query_array(p, '$.events[*].id') AS ids, p->'next_cursor' AS next_cursor
FROM audit.list_events(action => 'update', page_size => 2) p;
SELECT jsonb_path_query_array(p, '$.events[*].id') AS ids, p->'next_cursor' AS next_cursor
FROM audit.list_events(action => 'update', page_size => 2, cursor => '11') p;
SELECT audit.list_events(page_size => 1000);
SELECT audit.get_event(4) - 'occurred_at' - 'txid' - 'hash' AS event;
SELECT jsonb_array_length(audit.entity_events('Deal', 'deal_9')) AS deal_9_events;
SELECT s - 'since' - 'until' - 'per_day' AS stats FROM audit.stats(now() - interval '1 day', now() + interval '1 day') s;

-- Saved filters.
SELECT name, query, shared FROM audit.save_filter('stage changes', 'field:stage action:UPDATE', shared => true);
SELECT name, query, shared FROM audit.saved_filters;
SELECT id, entity_id FROM audit.search_saved('stage changes');
SELECT * FROM audit.save_filter('stage changes', 'field:stage');
SELECT * FROM audit.save_filter('typo', 'feild:stage');
SELECT audit.drop_filter('stage changes');

-- Export: lines ready for \copy (...) TO 'file'; the export itself is recorded.
SELECT regexp_replace(regexp_replace(line, '\d{4}-\d\d-\d\dT[0-9:.]+Z', '<time>'), '[0-9a-f]{64}$', '<hash>') AS csv
FROM audit.export('entity:Deal action:REVERT', 'csv', include_metadata => false) line;
SELECT line::jsonb - 'occurred_at' - 'txid' - 'hash' AS ndjson FROM audit.export('entity:Deal action:REVERT', 'ndjson') line;
SELECT action, metadata FROM audit.events WHERE action = 'EXPORT' ORDER BY id DESC LIMIT 2;
SELECT * FROM audit.export('entity:Deal', 'pdf');
