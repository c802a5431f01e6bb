-- A day in the CRM. Each unit of work is one transaction that first declares who
-- is acting, from where and through what (audit.set_context is transaction-local),
-- then changes data or logs an application event. The times in the comments are
-- the story; the trail records the real clock.

-- 08:52  Ann mistypes her password, then signs in with a TOTP code.
BEGIN;
SELECT audit.set_context(actor => 'ann@acme.test', actor_role => 'SALES_REP', ip => '203.0.113.42',
       user_agent => 'Mozilla/5.0 (Windows NT 10.0) Chrome/124.0', session_id => 'sess_ann_0852',
       source => 'UI', org_id => 'org_acme', metadata => '{"app_version": "4.18.2"}');
SELECT audit.log_event('LOGIN_FAILED', 'User', 'ann@acme.test', '{"reason": "invalid_password", "attempt": 1}');
SELECT audit.log_event('MFA_CHALLENGE', 'User', 'ann@acme.test', '{"method": "totp", "result": "passed"}');
SELECT audit.log_event('LOGIN', 'User', 'ann@acme.test', '{"auth_method": "password+totp"}');
COMMIT;

-- 09:10  Ann qualifies the Globex renewal: stage and probability move together.
BEGIN;
SELECT audit.set_context(actor => 'ann@acme.test', actor_role => 'SALES_REP', ip => '203.0.113.42',
       user_agent => 'Mozilla/5.0 (Windows NT 10.0) Chrome/124.0', session_id => 'sess_ann_0852',
       source => 'UI', org_id => 'org_acme', metadata => '{"screen": "opportunity/kanban"}');
UPDATE opportunities SET stage = 'Proposal', probability = 40 WHERE id = 'opp_1';
COMMIT;

-- 09:25  ... after the call, she raises the amount and pushes the close date.
BEGIN;
SELECT audit.set_context(actor => 'ann@acme.test', actor_role => 'SALES_REP', ip => '203.0.113.42',
       user_agent => 'Mozilla/5.0 (Windows NT 10.0) Chrome/124.0', session_id => 'sess_ann_0852',
       source => 'UI', org_id => 'org_acme', metadata => '{"screen": "opportunity/detail"}');
UPDATE opportunities
   SET amount = 52500.00, close_date = '2027-01-15', notes = 'Adding 40 seats after the pricing call'
 WHERE id = 'opp_1';
COMMIT;

-- 09:40  Ann imports the leads from yesterday's trade show (CSV, one COPY statement).
BEGIN;
SELECT audit.set_context(actor => 'ann@acme.test', actor_role => 'SALES_REP', ip => '203.0.113.42',
       user_agent => 'Mozilla/5.0 (Windows NT 10.0) Chrome/124.0', session_id => 'sess_ann_0852',
       source => 'IMPORT', org_id => 'org_acme',
       metadata => '{"file": "saastr-2026-leads.csv", "import_job": "imp_5521"}');
COPY leads (id, first_name, last_name, email, company, lead_source, score, owner_email) FROM STDIN WITH (FORMAT csv);
lead_2,Richard,Hendricks,richard@piedpiper.test,Pied Piper,tradeshow,20,ann@acme.test
lead_3,Art,Vandelay,art@vandelay.test,Vandelay Industries,tradeshow,5,ann@acme.test
lead_4,Jian,Yang,jian@newpiper.test,NewPiper,tradeshow,10,ann@acme.test
lead_5,Monica,Hall,monica@raviga.test,Raviga Capital,tradeshow,30,ann@acme.test
\.
COMMIT;

-- 10:05  The marketing-automation integration syncs two contacts over the REST API.
BEGIN;
SELECT audit.set_context(actor => 'svc-hubsync', actor_role => 'INTEGRATION', ip => '203.0.113.200',
       user_agent => 'hubsync-connector/3.2.1', session_id => 'tok_hubsync_77',
       source => 'API', org_id => 'org_acme', metadata => '{"request_id": "req_81f2c9", "endpoint": "PATCH /v2/contacts"}');
UPDATE contacts SET lifecycle_stage = 'opportunity', phone = '+1 555 0199', title = 'Senior Engineer' WHERE id = 'con_2';
UPDATE contacts SET lifecycle_stage = 'salesqualifiedlead' WHERE id = 'con_3';
COMMIT;

-- 10:30  Ann asks the AI assistant to qualify a lead from her call notes.
BEGIN;
SELECT audit.set_context(actor => 'crm-copilot', actor_role => 'AI_AGENT', ip => '203.0.113.210',
       user_agent => 'crm-copilot/1.4', session_id => 'sess_ann_0852', source => 'AI', org_id => 'org_acme',
       metadata => '{"conversation_id": "conv_7d1e", "model": "gpt-4o-2024-08-06", "on_behalf_of": "ann@acme.test", "prompt": "qualify Hooli from my call notes"}');
UPDATE leads
   SET status = 'Qualified', score = 82, lifecycle_stage = 'salesqualifiedlead',
       notes = 'Budget confirmed; decision in Q1; evaluating two vendors'
 WHERE id = 'lead_1';
COMMIT;

-- 11:15  Carol (sales manager) rebalances territories: two deals move from Bob to Ann.
BEGIN;
SELECT audit.set_context(actor => 'carol@acme.test', actor_role => 'SALES_MANAGER', ip => '203.0.113.77',
       user_agent => 'Mozilla/5.0 (Macintosh) Safari/17.4', session_id => 'sess_carol_1115',
       source => 'UI', org_id => 'org_acme', metadata => '{"reason": "territory rebalance Q4"}');
UPDATE opportunities SET owner_email = 'ann@acme.test' WHERE id = 'opp_3';
UPDATE accounts SET owner_email = 'ann@acme.test' WHERE id = 'acc_3';
UPDATE opportunities SET owner_email = 'ann@acme.test' WHERE id = 'opp_4';
COMMIT;

-- 12:00  The scoring workflow bumps the probability of every open deal: one UPDATE, several rows.
BEGIN;
SELECT audit.set_context(actor => 'workflow:deal-scoring', actor_role => 'SYSTEM', ip => '203.0.113.5',
       user_agent => 'acme-workflows/2.0', session_id => 'run_20261112_1200',
       source => 'AUTOMATION', org_id => 'org_acme', metadata => '{"workflow": "deal-scoring", "run_id": "run_20261112_1200"}');
UPDATE opportunities SET probability = least(probability + 10, 100) WHERE stage NOT IN ('Closed Won', 'Closed Lost');
COMMIT;

-- 14:20  Bob gets promoted (by an admin), closes the Initech deal and deletes a junk lead.
BEGIN;
SELECT audit.set_context(actor => 'dana@acme.test', actor_role => 'ADMIN', ip => '203.0.113.9',
       user_agent => 'Mozilla/5.0 (X11; Linux) Firefox/126.0', session_id => 'sess_dana_1410',
       source => 'UI', org_id => 'org_acme', metadata => '{"screen": "settings/users"}');
SELECT audit.log_event('PERMISSION_CHANGE', 'User', 'bob@acme.test',
       '{"role": {"old": "SALES_REP", "new": "SALES_MANAGER"}, "granted": ["reassign_deals", "export_reports"]}');
COMMIT;

BEGIN;
SELECT audit.set_context(actor => 'bob@acme.test', actor_role => 'SALES_MANAGER', ip => '203.0.113.90',
       user_agent => 'Mozilla/5.0 (iPhone) Mobile Safari/17.4', session_id => 'sess_bob_1420',
       source => 'UI', org_id => 'org_acme', metadata => '{"device": "mobile"}');
SELECT audit.log_event('LOGIN', 'User', 'bob@acme.test', '{"auth_method": "sso", "idp": "okta"}');
UPDATE opportunities SET stage = 'Negotiation', probability = 80 WHERE id = 'opp_2';
COMMIT;

BEGIN;
SELECT audit.set_context(actor => 'bob@acme.test', actor_role => 'SALES_MANAGER', ip => '203.0.113.90',
       user_agent => 'Mozilla/5.0 (iPhone) Mobile Safari/17.4', session_id => 'sess_bob_1420',
       source => 'UI', org_id => 'org_acme', metadata => '{"device": "mobile"}');
UPDATE opportunities SET stage = 'Closed Won', probability = 100, amount = 118000.00 WHERE id = 'opp_2';
DELETE FROM leads WHERE id = 'lead_3';
COMMIT;

-- 15:30  Ann moves her Globex deal on again.
BEGIN;
SELECT audit.set_context(actor => 'ann@acme.test', actor_role => 'SALES_REP', ip => '203.0.113.42',
       user_agent => 'Mozilla/5.0 (Windows NT 10.0) Chrome/124.0', session_id => 'sess_ann_0852',
       source => 'UI', org_id => 'org_acme', metadata => '{"screen": "opportunity/kanban"}');
UPDATE opportunities SET stage = 'Negotiation', probability = 70 WHERE id = 'opp_1';
COMMIT;

-- 16:45  Dana exports the pipeline and changes a workspace setting.
BEGIN;
SELECT audit.set_context(actor => 'dana@acme.test', actor_role => 'ADMIN', ip => '203.0.113.9',
       user_agent => 'Mozilla/5.0 (X11; Linux) Firefox/126.0', session_id => 'sess_dana_1645',
       source => 'UI', org_id => 'org_acme', metadata => '{"screen": "reports/pipeline"}');
SELECT audit.log_event('EXPORT', 'Opportunity', NULL, '{"report": "pipeline", "rows": 4, "format": "csv"}');
SELECT audit.log_event('CONFIG_CHANGE', 'Setting', 'deal_rotting_days', '{"old": 30, "new": 21}');
COMMIT;
