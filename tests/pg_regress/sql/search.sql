-- Searching the trail: every key, keyset pages, the query API, saved filters, export.
SET timezone = 'UTC';
\set SHOW_CONTEXT never

-- A known set of events: offsets from :base are
--  1 o1 insert, 2 o1 stage, 3 o2 insert, 4 o2 stage+amount, 5-6 contacts insert (one statement),
--  7 contact update (AI), 8 o1 delete, 9 LOGIN_FAILED, 10 EXPORT.
CREATE TABLE srch_opp (id text PRIMARY KEY, stage text, amount int);
CREATE TABLE srch_contact (id int PRIMARY KEY, email text);
SELECT entity_type FROM audit.enable('srch_opp', entity_name => 'Prospect');
SELECT entity_type FROM audit.enable('srch_contact');
SELECT audit.sync();
SELECT max(id) AS base FROM audit.events \gset
SELECT set_config('srch.base', :'base', false) IS NOT NULL AS base_set;
SELECT audit.set_context(actor => 'sales.admin', actor_role => 'ADMIN', source => 'UI', ip => '203.0.113.7',
                         org_id => 'org_a', session_id => 's1', is_local => false);
INSERT INTO srch_opp VALUES ('o1', 'Qualification', 100);
UPDATE srch_opp SET stage = 'Proposal' WHERE id = 'o1';
SELECT audit.set_context(actor => 'sales.bob', actor_role => 'REP', source => 'API', ip => '198.51.100.9',
                         org_id => 'org_a', session_id => 's2', is_local => false);
INSERT INTO srch_opp VALUES ('o2', 'Qualification', 50);
UPDATE srch_opp SET stage = 'Closed Won', amount = 75 WHERE id = 'o2';
SELECT audit.set_context(actor => 'importer', actor_role => 'SYSTEM', source => 'IMPORT', ip => '10.1.2.3',
                         org_id => 'org_b', session_id => 's3', is_local => false);
INSERT INTO srch_contact VALUES (1, 'ann@acme.test'), (2, 'bob@initech.test');
SELECT audit.set_context(actor => 'copilot', actor_role => 'AI', source => 'AI', ip => '203.0.113.200',
                         org_id => 'org_b', session_id => 's4', is_local => false);
UPDATE srch_contact SET email = 'ann@globex.test' WHERE id = 1;
SELECT audit.set_context(actor => 'sales.admin', actor_role => 'ADMIN', source => 'UI', ip => '203.0.113.7',
                         org_id => 'org_a', session_id => 's1', is_local => false);
DELETE FROM srch_opp WHERE id = 'o1';
SELECT audit.set_context(actor => 'mallory', source => 'UI', ip => '192.0.2.66', is_local => false);
SELECT audit.log_event('LOGIN_FAILED', 'User', 'mallory', '{"reason": "bad password"}');
SELECT audit.log_event('EXPORT', 'Prospect', NULL, '{"rows": 250}');
SELECT audit.clear_context();
SELECT audit.sync();
SELECT id - :base AS n, actor, action, entity_type, entity_id FROM audit.events WHERE id > :base ORDER BY id;

-- Offsets of the events a search returns, newest first.
CREATE FUNCTION pg_temp.found(query text, max_rows int DEFAULT 1000, cursor text DEFAULT NULL) RETURNS text
LANGUAGE sql AS $$
    SELECT coalesce(string_agg((id - current_setting('srch.base')::bigint)::text, ',' ORDER BY id DESC), '-')
    FROM audit.search(query, max_rows, cursor) WHERE id > current_setting('srch.base')::bigint
$$;

-- Every key finds exactly its events.
SELECT q AS query, pg_temp.found(q) AS events
FROM unnest(ARRAY[
    'user:sales.admin', 'user:sales.*', 'user:sales.admin user:importer', 'role:rep', 'action:update',
    'entity:prospect', 'entity:srch_opp action:INSERT', 'entity:srch_contact', 'id:o2', 'field:amount',
    'field:stage old_value:Qualification', 'new_value:"Closed Won"', 'old_value:Proposal', 'source:ai',
    'ip:203.0.113.0/24', 'ip:198.51.100.9', 'org:org_b session:s3', 'action:UPDATE -user:copilot', 'globex',
    '"bad password"', 'user:sales.admin date:today', 'user:sales.admin date:<2020-01-01',
    'date:7d action:LOGIN_FAILED']) WITH ORDINALITY AS t(q, n)
ORDER BY n;
SELECT to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD') AS today \gset
SELECT replace(q, :'today', '<today>') AS query, pg_temp.found(q) AS events
FROM unnest(ARRAY[format('date:%s user:copilot', :'today'), format('date:%s..%s user:copilot', :'today', :'today'),
                  format('date:>%s user:copilot', :'today')]) WITH ORDINALITY AS t(q, n)
ORDER BY n;
-- What the search returns, read as rows.
SELECT id - :base AS n, actor, changes FROM audit.search('field:stage old_value:Proposal') WHERE id > :base;
\echo the SQL a search runs, with its values as parameters
SELECT audit.explain_search('user:sales.admin action:UPDATE entity:Opportunity field:stage old_value:Qualification ip:203.0.113.0/24 date:>2026-05-01');

-- Keyset pages stay stable while new events arrive.
SELECT pg_temp.found('user:sales.*', 2) AS page_1;
INSERT INTO srch_opp VALUES ('o3', 'Lead', 1);
SELECT audit.set_context(actor => 'sales.zed', is_local => false);
INSERT INTO srch_opp VALUES ('o4', 'Lead', 1);
SELECT audit.clear_context();
SELECT audit.sync();
SELECT pg_temp.found('user:sales.*', 2, (:base + 4)::text) AS page_2;
SELECT pg_temp.found('user:sales.*', 2, (:base + 2)::text) AS page_3;
SELECT pg_temp.found('user:sales.*', 2) AS new_page_1;

-- Mistakes are explained, with where and how to fix them.
SELECT * FROM audit.search('action:UPDATE usr:ann');
SELECT * FROM audit.search('date:2026-02-30');
SELECT * FROM audit.search('ip:203.0.113.7/24');
SELECT * FROM audit.search('old_value:"Closed Won');
SELECT * FROM audit.search('source:fax');
SELECT * FROM audit.search('user:x', 0);
SELECT * FROM audit.search('user:x', 10, 'abc');

-- The query API, as PostgREST would expose it.
SELECT (SELECT array_agg((e->>'id')::bigint - :base) FROM jsonb_array_elements(p->'events') e) AS ids,
       (p->>'next_cursor')::bigint - :base AS next_cursor
FROM audit.list_events(user_id => 'sales.admin', page_size => 2) p;
SELECT (SELECT array_agg((e->>'id')::bigint - :base) FROM jsonb_array_elements(p->'events') e) AS ids,
       p->'next_cursor' AS next_cursor
FROM audit.list_events(user_id => 'sales.admin', page_size => 2, cursor => (:base + 2)::text) p;
SELECT jsonb_array_length(audit.list_events(action => 'insert', entity_type => 'prospect')->'events') AS prospect_inserts;
SELECT jsonb_array_length(audit.list_events(start_date => now() + interval '1 day')->'events') AS tomorrow;
SELECT audit.list_events(page_size => 501);
SELECT e->>'actor' AS actor, e->>'action' AS action, e->>'entity_id' AS entity_id, e->'changes' AS changes,
       (e->>'statement_id')::bigint = (e->>'id')::bigint AS own_statement, length(e->>'hash') AS hash_hex_length
FROM audit.get_event(:base + 4) e;
SELECT audit.get_event(-1);
SELECT jsonb_array_length(audit.entity_events('prospect', 'o1')) AS o1_events;
SELECT key AS stat, value FROM audit.stats((SELECT occurred_at FROM audit.events WHERE id = :base + 1), now() + interval '1 day') s,
     jsonb_each(s - 'since' - 'until' - 'per_day') ORDER BY key;
SELECT audit.stats(now() + interval '1 day', now() + interval '2 days')->'total' AS total_tomorrow;

-- Saved filters: one's own, or shared with every reader.
CREATE ROLE srch_ann IN ROLE audit_reader;
CREATE ROLE srch_bob IN ROLE audit_reader;
SET ROLE srch_ann;
SELECT name, query, shared FROM audit.save_filter('my deals', 'entity:Prospect action:UPDATE');
SELECT name, query, shared FROM audit.save_filter('ai edits', 'source:AI', shared => true);
SELECT * FROM audit.save_filter('my deals', 'user:x');
SELECT * FROM audit.save_filter('broken', 'usr:x');
SELECT owner, name, shared FROM audit.saved_filters ORDER BY name;
SELECT id - :base AS n FROM audit.search_saved('my deals') WHERE id > :base;
RESET ROLE;
SET ROLE srch_bob;
SELECT owner, name FROM audit.saved_filters;
SELECT id - :base AS n FROM audit.search_saved('ai edits') WHERE id > :base;
SELECT * FROM audit.search_saved('my deals');
SELECT audit.drop_filter('ai edits') AS dropped_by_bob;
RESET ROLE;
SET ROLE srch_ann;
SELECT audit.drop_filter('ai edits') AS dropped_by_ann;
-- A name two owners share is ambiguous for anyone else; each owner uses their own.
SELECT name FROM audit.save_filter('team view', 'action:UPDATE', shared => true);
RESET ROLE;
SET ROLE srch_bob;
SELECT name FROM audit.save_filter('team view', 'action:DELETE', shared => true);
RESET ROLE;
CREATE ROLE srch_cat IN ROLE audit_reader;
SET ROLE srch_cat;
SELECT count(*) FROM audit.search_saved('team view');
RESET ROLE;
SET ROLE srch_ann;
SELECT id - :base AS n FROM audit.search_saved('team view') WHERE id > :base;
RESET ROLE;

-- Export: lines ready for \copy (...) TO 'file'; every export is itself an EXPORT event.
SELECT regexp_replace(regexp_replace(line, '\d{4}-\d\d-\d\dT[0-9:.]+Z', '<time>'), '[0-9a-f]{64}$', '<hash>') AS csv
FROM audit.export('entity:Prospect id:o2') line;
SELECT string_agg(line, E'\n') AS json_document FROM audit.export('id:o2', 'JSON', false) line \gset
SELECT jsonb_array_length(:'json_document'::jsonb) AS events, (:'json_document'::jsonb)->0 ? 'metadata' AS has_metadata;
SELECT (line::jsonb->>'id')::bigint - :base AS n, line::jsonb->>'action' AS action, length(line::jsonb->>'hash') AS hash_hex_length,
       (SELECT string_agg(k, ',' ORDER BY k) FROM jsonb_object_keys(line::jsonb) k) AS fields
FROM audit.export('id:o2', 'ndjson') line;
SELECT audit.export('id:o2', 'xml');
SELECT audit.sync();
SELECT actor, entity_type, metadata FROM audit.events WHERE action = 'EXPORT' AND id > :base ORDER BY id;
