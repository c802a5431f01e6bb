\set acc random(1, 5000)
INSERT INTO contacts (org_id, first_name, last_name, email, phone, title, account_id, lifecycle_stage, notes)
VALUES ('org_7', 'Ada', 'Lovelace', 'ada@example.test', '+1 555 0100', 'CTO', :acc, 'lead',
        'Met at the conference; interested in the enterprise plan and a pilot with two teams next quarter. Wants pricing for 50 seats, SSO, audit logs and a dedicated CSM. Follow up after the board meeting in March; loop in procurement early.');
