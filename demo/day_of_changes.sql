-- A day in the CRM: each unit of work is a transaction with its acting context.

-- 08:55 a failed login, then a login with MFA.
BEGIN;
SELECT audit.set_context(actor => 'ann@acme.test', ip => '203.0.113.42', user_agent => 'Chrome/124.0 (Windows)', source => 'UI', org_id => 'org_acme');
SELECT audit.log_event('LOGIN_FAILED', 'User', 'ann@acme.test', '{"reason": "bad password"}');
SELECT audit.log_event('MFA_CHALLENGE', 'User', 'ann@acme.test', '{"method": "totp", "success": true}');
SELECT audit.log_event('LOGIN', 'User', 'ann@acme.test', '{"auth_method": "password+totp"}');
COMMIT;

-- 09:10 ann moves the Globex renewal forward and raises the amount.
BEGIN;
SELECT audit.set_context(actor => 'ann@acme.test', actor_role => 'SALES_REP', ip => '203.0.113.42',
       user_agent => 'Chrome/124.0 (Windows)', session_id => 'sess_ann_1', source => 'UI', org_id => 'org_acme');
UPDATE opportunities SET stage = 'Proposal', probability = 40 WHERE id = 'opp_1';
UPDATE opportunities SET amount = 52000 WHERE id = 'opp_1';
COMMIT;

-- 09:30 a CSV import of new leads (one statement, one bulk operation).
BEGIN;
SELECT audit.set_context(actor => 'ann@acme.test', actor_role => 'SALES_REP', ip => '203.0.113.42',
       session_id => 'sess_ann_1', source => 'IMPORT', org_id => 'org_acme', metadata => '{"file": "tradeshow-leads.csv"}');
INSERT INTO leads (id, company, email, status, score, owner_email) VALUES
    ('lead_1', 'Umbrella', 'alice@umbrella.test', 'New', 10, 'ann@acme.test'),
    ('lead_2', 'Hooli', 'gavin@hooli.test', 'New', 25, 'ann@acme.test'),
    ('lead_3', 'Vandelay', 'art@vandelay.test', 'New', 5, 'ann@acme.test');
SELECT audit.log_event('BULK_IMPORT', 'Lead', NULL, '{"rows": 3, "file": "tradeshow-leads.csv"}');
COMMIT;

-- 10:05 the marketing integration updates a contact over the API.
BEGIN;
SELECT audit.set_context(actor => 'hubsync@integrations', actor_role => 'INTEGRATION', ip => '198.51.100.7',
       user_agent => 'hubsync/3.2', source => 'API', org_id => 'org_acme', metadata => '{"request_id": "req_81f2"}');
UPDATE contacts SET lifecycle_stage = 'opportunity', phone = '+1 555 0199' WHERE id = 'con_2';
SELECT audit.log_event('API_CALL', 'Contact', 'con_2', '{"endpoint": "PATCH /v1/contacts/con_2", "status": 200}');
COMMIT;

-- 11:00 the AI assistant qualifies a lead, with its conversation.
BEGIN;
SELECT audit.set_context(actor => 'copilot', actor_role => 'AI_AGENT', source => 'AI', org_id => 'org_acme',
       metadata => '{"conversation_id": "conv_7d1", "model": "crm-assistant-2", "on_behalf_of": "ann@acme.test"}');
UPDATE leads SET status = 'Qualified', score = 80 WHERE id = 'lead_2';
COMMIT;

-- 12:00 the nightly automation bumps probabilities of every open deal (one bulk statement).
BEGIN;
SELECT audit.set_context(actor => 'workflow:probability-model', actor_role => 'SYSTEM', source => 'AUTOMATION', org_id => 'org_acme');
UPDATE opportunities SET probability = probability + 10 WHERE stage <> 'Closed Won';
COMMIT;

-- 14:20 bob's manager reassigns a deal; bob closes another; a lead is deleted.
BEGIN;
SELECT audit.set_context(actor => 'carol@acme.test', actor_role => 'SALES_MANAGER', ip => '203.0.113.77',
       user_agent => 'Safari/17.4 (macOS)', session_id => 'sess_carol_3', source => 'UI', org_id => 'org_acme');
UPDATE opportunities SET owner_email = 'ann@acme.test' WHERE id = 'opp_3';
SELECT audit.log_event('PERMISSION_CHANGE', 'User', 'bob@acme.test', '{"role": {"old": "SALES_REP", "new": "SENIOR_REP"}}');
COMMIT;
BEGIN;
SELECT audit.set_context(actor => 'bob@acme.test', actor_role => 'SALES_REP', ip => '203.0.113.90',
       user_agent => 'Firefox/126.0 (Linux)', session_id => 'sess_bob_9', source => 'UI', org_id => 'org_acme');
UPDATE opportunities SET stage = 'Closed Won', probability = 100 WHERE id = 'opp_2';
DELETE FROM leads WHERE id = 'lead_3';
COMMIT;

-- 16:45 an admin exports the pipeline and changes a setting.
BEGIN;
SELECT audit.set_context(actor => 'dana@acme.test', actor_role => 'ADMIN', ip => '203.0.113.5',
       user_agent => 'Chrome/124.0 (macOS)', session_id => 'sess_dana_2', source => 'UI', org_id => 'org_acme');
SELECT audit.log_event('EXPORT', 'Opportunity', NULL, '{"rows": 3, "format": "csv", "report": "pipeline"}');
SELECT audit.log_event('CONFIG_CHANGE', 'Setting', 'deal_rotting_days', '{"old": 30, "new": 21}');
COMMIT;
