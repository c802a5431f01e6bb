-- A deal's stage disputed between two reps: history, revert, point-in-time compare.
SET timezone = 'UTC';
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
SELECT audit.revert(:bobs_event, 'stage') IS NOT NULL AS reverted;
COMMIT;
SELECT stage, owner FROM deals;
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
SELECT max(id) AS delete_event FROM audit.events WHERE entity_type = 'Deal' AND action = 'DELETE' \gset
SELECT audit.revert(:delete_event) IS NOT NULL AS restored;
SELECT * FROM deals;
SELECT audit.record_at('Deal', 'deal_9', now()) = to_jsonb(d) - 'amount' || jsonb_build_object('amount', d.amount::text) AS trail_matches_row
FROM deals d;
