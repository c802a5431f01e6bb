-- Revert, restore and point-in-time reconstruction, all from the stored trail.
-- audit.revert() returns nothing: the change it makes is captured as a REVERT
-- event, stored like any other once the transaction commits.
SET timezone = 'UTC';
\set SHOW_CONTEXT never

-- A deal's stage disputed between two reps.
CREATE TABLE deals (id text PRIMARY KEY, name text, stage text, amount numeric(12,2), owner text);
SELECT entity_type FROM audit.enable('deals', entity_name => 'Deal');
BEGIN;
SELECT audit.set_context(actor => 'ann', actor_role => 'SALES_REP', source => 'UI');
INSERT INTO deals VALUES ('deal_9', 'Initech expansion', 'Qualification', 50000, 'ann');
COMMIT;
BEGIN;
SELECT audit.set_context(actor => 'ann', actor_role => 'SALES_REP', source => 'UI');
UPDATE deals SET stage = 'Proposal' WHERE id = 'deal_9';
COMMIT;
BEGIN;
SELECT audit.set_context(actor => 'bob', actor_role => 'SALES_REP', source => 'API');
UPDATE deals SET stage = 'Closed Lost', owner = 'bob' WHERE id = 'deal_9';
COMMIT;
SELECT audit.sync();

-- The dispute: who changed the stage, when, how.
SELECT action, field, old_value, new_value, actor, source FROM audit.history('Deal', 'deal_9', 'stage');
SELECT max(id) AS bobs_event FROM audit.events WHERE entity_type = 'Deal' AND actor = 'bob' \gset

-- Ann cannot revert; an admin reverts only the stage, with a reason.
CREATE ROLE ann_user;
SET ROLE ann_user;
SELECT audit.revert(:bobs_event, 'stage');
RESET ROLE;
BEGIN;
SELECT audit.set_context(actor => 'admin.ada', actor_role => 'ADMIN', source => 'UI', metadata => '{"reason": "dispute #7"}');
SELECT audit.revert(:bobs_event, 'stage');
COMMIT;
SELECT stage, owner FROM deals;
SELECT audit.sync();
SELECT action, actor, changes, metadata - 'reverted_event_id' AS metadata,
       (metadata->>'reverted_event_id')::bigint = :bobs_event AS reverts_bobs_event
FROM audit.events WHERE entity_type = 'Deal' AND action = 'REVERT';

-- Reverting bob's event again is refused: the stage no longer holds what it wrote.
SELECT audit.revert(:bobs_event, 'stage');

-- Point in time: just after ann's proposal versus now.
SELECT occurred_at AS proposal_time FROM audit.events WHERE entity_type = 'Deal' AND action = 'UPDATE' AND actor = 'ann' \gset
SELECT audit.record_at('Deal', 'deal_9', :'proposal_time');
SELECT field, value_at_t1, value_at_t2, changed FROM audit.compare('Deal', 'deal_9', :'proposal_time', now());

-- Deleted by mistake, restored from the trail.
DELETE FROM deals WHERE id = 'deal_9';
SELECT audit.sync();
SELECT max(id) AS delete_event FROM audit.events WHERE entity_type = 'Deal' AND action = 'DELETE' \gset
SELECT audit.revert(:delete_event);
SELECT * FROM deals;
SELECT audit.sync();
SELECT audit.record_at('Deal', 'deal_9', now()) = to_jsonb(d) - 'amount' || jsonb_build_object('amount', d.amount::text) AS trail_matches_row
FROM deals d;

-- One field reverted; the revert is acted by the caller, with its context's
-- metadata, and the revert context does not leak into later changes.
CREATE TABLE rv_deal (id text PRIMARY KEY, stage text, amount numeric(12,2), tags text[], extra jsonb,
                      closes timestamptz, ssn text, rep text);
INSERT INTO rv_deal VALUES ('d1', 'Qualification', 1000, '{a,b}', '{"k": 1}', '2026-12-31 10:00+00', '111', 'ann');
SELECT entity_type FROM audit.enable('rv_deal', mask_columns => ARRAY['ssn']);
SELECT audit.set_context(actor => 'ann', source => 'UI', is_local => false);
UPDATE rv_deal SET stage = 'Proposal', amount = 2000 WHERE id = 'd1';
SELECT audit.sync();
SELECT max(id) AS update_event FROM audit.events WHERE entity_type = 'rv_deal' \gset
SELECT audit.set_context(actor => 'admin.ada', source => 'UI', metadata => '{"ticket": "T-7"}', is_local => false);
SELECT audit.revert(:update_event, 'stage');
SELECT audit.set_context(actor => 'ann', source => 'UI', is_local => false);
UPDATE rv_deal SET rep = 'bob';
SELECT audit.clear_context();
SELECT stage, amount, rep FROM rv_deal;
SELECT audit.sync();
SELECT id - :update_event AS after_update, action, actor, changes, metadata - 'reverted_event_id' AS metadata,
       (metadata->>'reverted_event_id')::bigint = :update_event AS reverts_the_update
FROM audit.events WHERE entity_type = 'rv_deal' AND id > :update_event ORDER BY id;

-- A whole update reverted, across types; reverting the revert redoes it.
UPDATE rv_deal SET amount = NULL, tags = '{c}', extra = '{"k": [1, 2.50]}', closes = '2027-01-15 08:30:00.5+00';
SELECT audit.sync();
SELECT max(id) AS update_event FROM audit.events WHERE entity_type = 'rv_deal' \gset
SELECT audit.revert(:update_event);
SELECT amount, tags, extra, closes FROM rv_deal;
SELECT audit.sync();
SELECT max(id) AS revert_event FROM audit.events WHERE entity_type = 'rv_deal' \gset
SELECT audit.revert(:revert_event);
SELECT amount, tags, extra, closes FROM rv_deal;
SELECT audit.sync();
SELECT action, changes ? 'amount' AS amount, metadata->>'operation' AS operation,
       (metadata->>'reverted_event_id')::bigint - :update_event AS reverted
FROM audit.events WHERE entity_type = 'rv_deal' AND id > :update_event ORDER BY id;

-- Refused when the value changed since, unless forced.
UPDATE rv_deal SET stage = 'Proposal';
SELECT audit.sync();
SELECT max(id) AS first FROM audit.events WHERE entity_type = 'rv_deal' \gset
UPDATE rv_deal SET stage = 'Negotiation';
SELECT audit.sync();
SELECT max(id) AS second FROM audit.events WHERE entity_type = 'rv_deal' \gset
SELECT audit.revert(:first, 'stage');
SELECT :second - :first AS newer_event_is_next;
SELECT audit.revert(:second);
SELECT audit.revert(:first);
SELECT stage FROM rv_deal;
UPDATE rv_deal SET stage = 'Won';
SELECT audit.sync();
SELECT max(id) AS won FROM audit.events WHERE entity_type = 'rv_deal' \gset
UPDATE rv_deal SET stage = 'Lost';
SELECT audit.sync();
SELECT audit.revert(:won);
SELECT audit.revert(:won, force => true);
SELECT stage FROM rv_deal;

-- Refusals: masked, unchanged or dropped fields, unknown events, events that
-- are not record changes, callers who are not audit_admin. Nothing is half done.
UPDATE rv_deal SET ssn = '222', rep = 'carl';
SELECT audit.log_event('LOGIN');
SELECT audit.sync();
SELECT max(id) AS update_event FROM audit.events WHERE entity_type = 'rv_deal' AND action = 'UPDATE' \gset
SELECT max(id) AS login_event FROM audit.events WHERE action = 'LOGIN' \gset
SELECT min(id) AS config_event FROM audit.events WHERE entity_id = 'public.rv_deal' AND action = 'CONFIG_CHANGE' \gset
SELECT audit.revert(:update_event, 'ssn');
SELECT audit.revert(:update_event, 'stage');
SELECT audit.revert(:update_event);
ALTER TABLE rv_deal DROP COLUMN rep;
SELECT audit.revert(:update_event, 'rep');
SELECT audit.revert(-1);
SELECT audit.revert(:login_event);
SELECT audit.revert(:config_event);
CREATE ROLE rv_clerk;
SET ROLE rv_clerk;
SELECT audit.revert(:update_event, 'ssn');
RESET ROLE;
SELECT ssn FROM rv_deal;

-- A deleted row comes back whole (composite key, NULLs kept); reverting its
-- INSERT deletes it, refused while newer events exist unless forced.
CREATE TABLE rv_rows (org text, num int, name text, note text, PRIMARY KEY (org, num));
SELECT entity_type FROM audit.enable('rv_rows');
INSERT INTO rv_rows VALUES ('acme', 1, 'Ann', NULL);
SELECT audit.sync();
SELECT max(id) AS insert_event FROM audit.events WHERE entity_type = 'rv_rows' \gset
DELETE FROM rv_rows;
SELECT audit.sync();
SELECT max(id) AS delete_event FROM audit.events WHERE entity_type = 'rv_rows' \gset
SELECT audit.revert(:delete_event);
SELECT org, num, name, note IS NULL AS note_is_null FROM rv_rows;
SELECT audit.sync();
SELECT action, entity_id, metadata->>'operation' AS operation, changes FROM audit.events
WHERE entity_type = 'rv_rows' AND id > :delete_event;
SELECT audit.revert(:delete_event);
SELECT audit.revert(:insert_event);
SELECT audit.revert(:insert_event, force => true);
SELECT count(*) AS rows_left FROM rv_rows;
SELECT audit.sync();
SELECT audit.revert(:insert_event, force => true);

-- revert_statement reverts every event of a statement, newest first, or none.
CREATE TABLE rv_bulk (id int PRIMARY KEY, stage text);
INSERT INTO rv_bulk SELECT g, 'Lead' FROM generate_series(1, 5) g;
SELECT entity_type FROM audit.enable('rv_bulk');
UPDATE rv_bulk SET stage = 'Qualified';
UPDATE rv_bulk SET stage = 'Won' WHERE id = 3;
SELECT audit.sync();
SELECT min(statement_id) AS bulk_statement FROM audit.events WHERE entity_type = 'rv_bulk' \gset
SELECT count(*) FROM audit.revert_statement(:bulk_statement);
SELECT stage, count(*) FROM rv_bulk GROUP BY 1 ORDER BY 1;  -- nothing reverted
UPDATE rv_bulk SET stage = 'Qualified' WHERE id = 3;
SELECT r - :bulk_statement AS reverted FROM audit.revert_statement(:bulk_statement) r;
SELECT stage, count(*) FROM rv_bulk GROUP BY 1 ORDER BY 1;
SELECT audit.sync();
SELECT count(*) AS revert_events, count(DISTINCT (metadata->>'reverted_event_id')) AS distinct_reverted
FROM audit.events WHERE entity_type = 'rv_bulk' AND action = 'REVERT';
SELECT count(*) FROM audit.revert_statement(-5);

-- record_at and compare rebuild a record from its events; masked fields stay masked.
CREATE TABLE rv_hist (id int PRIMARY KEY, stage text, amount int, ssn text);
SELECT entity_type FROM audit.enable('rv_hist', mask_columns => ARRAY['ssn']);
INSERT INTO rv_hist VALUES (1, 'Lead', 100, 'x');
UPDATE rv_hist SET stage = 'Won', amount = NULL;
SELECT audit.sync();
SELECT audit.record_at('rv_hist', '1', now() + interval '1 day');
SELECT audit.record_at('rv_hist', '1', '2000-01-01') IS NULL AS absent_then;
-- Absent then (the record did not exist) differs from a JSON null now.
SELECT field, value_at_t1, value_at_t2, changed FROM audit.compare('rv_hist', '1', '2000-01-01', now() + interval '1 day');
DELETE FROM rv_hist;
SELECT audit.sync();
SELECT audit.record_at('rv_hist', '1', now() + interval '1 day') IS NULL AS gone_now;

-- Reverting needs exactly one tracked table for the event's entity type.
CREATE TABLE rv_gone (id int PRIMARY KEY, v text);
SELECT entity_type FROM audit.enable('rv_gone', entity_name => 'Shared');
INSERT INTO rv_gone VALUES (1, 'a');
UPDATE rv_gone SET v = 'b';
SELECT audit.sync();
SELECT max(id) AS shared_update FROM audit.events WHERE entity_type = 'Shared' \gset
CREATE TABLE rv_twin (id int PRIMARY KEY, v text);
SELECT entity_type FROM audit.enable('rv_twin', entity_name => 'Shared');
SELECT audit.revert(:shared_update);
SELECT audit.disable('rv_twin'), audit.disable('rv_gone');
SELECT audit.revert(:shared_update);
SELECT v FROM rv_gone;
