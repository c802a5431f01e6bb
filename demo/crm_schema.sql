-- A small CRM, audited from the moment it goes live.
-- Expects the extension to be installed already (scripts/demo.sh runs CREATE EXTENSION audit).

CREATE TABLE accounts (
    id             text PRIMARY KEY,                 -- 'acc_1'
    name           text NOT NULL,
    domain         text,
    industry       text,
    employees      int,
    owner_email    text,
    notes          text,
    updated_at     timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE contacts (
    id              text PRIMARY KEY,                -- 'con_1'
    account_id      text REFERENCES accounts,
    first_name      text NOT NULL,
    last_name       text NOT NULL,
    email           text,
    phone           text,                            -- personal data: masked in the trail
    title           text,
    lifecycle_stage text NOT NULL DEFAULT 'subscriber',
    owner_email     text,
    notes           text,
    updated_at      timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE leads (
    id              text PRIMARY KEY,                -- 'lead_1'
    first_name      text,
    last_name       text,
    email           text,
    company         text,
    lead_source     text,                            -- where the lead came from (tradeshow, web form...)
    status          text NOT NULL DEFAULT 'New',
    score           int NOT NULL DEFAULT 0,
    lifecycle_stage text NOT NULL DEFAULT 'lead',
    owner_email     text,
    notes           text,
    updated_at      timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE opportunities (
    id           text PRIMARY KEY,                   -- 'opp_1'
    account_id   text NOT NULL REFERENCES accounts,
    name         text NOT NULL,
    stage        text NOT NULL DEFAULT 'Qualification',
    amount       numeric(12,2),
    probability  int CHECK (probability BETWEEN 0 AND 100),
    close_date   date,
    owner_email  text,
    notes        text,
    updated_at   timestamptz NOT NULL DEFAULT now()
);

-- The application touches updated_at on every change; the trail leaves it out
-- (exclude_columns), so it never shows up as a changed field.
CREATE FUNCTION touch_updated_at() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.updated_at := now();
    RETURN NEW;
END
$$;
CREATE TRIGGER accounts_touch      BEFORE UPDATE ON accounts      FOR EACH ROW EXECUTE FUNCTION touch_updated_at();
CREATE TRIGGER contacts_touch      BEFORE UPDATE ON contacts      FOR EACH ROW EXECUTE FUNCTION touch_updated_at();
CREATE TRIGGER leads_touch         BEFORE UPDATE ON leads         FOR EACH ROW EXECUTE FUNCTION touch_updated_at();
CREATE TRIGGER opportunities_touch BEFORE UPDATE ON opportunities FOR EACH ROW EXECUTE FUNCTION touch_updated_at();

-- Seed data, loaded before auditing starts (the trail begins at go-live).
INSERT INTO accounts (id, name, domain, industry, employees, owner_email) VALUES
    ('acc_1', 'Globex Corporation', 'globex.test',  'Manufacturing', 1200, 'ann@acme.test'),
    ('acc_2', 'Initech',            'initech.test', 'Software',       340, 'bob@acme.test'),
    ('acc_3', 'Umbrella Health',    'umbrella.test','Healthcare',    5400, 'bob@acme.test');

INSERT INTO contacts (id, account_id, first_name, last_name, email, phone, title, lifecycle_stage, owner_email) VALUES
    ('con_1', 'acc_1', 'Hank',  'Scorpio', 'hank@globex.test',      '+1 555 0100', 'CEO',              'customer',              'ann@acme.test'),
    ('con_2', 'acc_2', 'Peter', 'Gibbons', 'peter@initech.test',    '+1 555 0101', 'Engineer',         'lead',                  'bob@acme.test'),
    ('con_3', 'acc_2', 'Bill',  'Lumbergh','bill@initech.test',     '+1 555 0102', 'VP Operations',    'marketingqualifiedlead','bob@acme.test'),
    ('con_4', 'acc_3', 'Alice', 'Abernathy','alice@umbrella.test',  '+1 555 0103', 'Head of IT',       'salesqualifiedlead',    'bob@acme.test');

INSERT INTO leads (id, first_name, last_name, email, company, lead_source, status, score, owner_email) VALUES
    ('lead_1', 'Gavin', 'Belson', 'gavin@hooli.test', 'Hooli', 'web form', 'Working', 35, 'ann@acme.test');

INSERT INTO opportunities (id, account_id, name, stage, amount, probability, close_date, owner_email) VALUES
    ('opp_1', 'acc_1', 'Globex renewal 2026',       'Qualification',  48000.00, 20, '2026-12-31', 'ann@acme.test'),
    ('opp_2', 'acc_2', 'Initech expansion',         'Proposal',      125000.00, 50, '2027-01-31', 'bob@acme.test'),
    ('opp_3', 'acc_2', 'Initech premium support',   'Qualification',  18000.00, 20, '2027-02-28', 'bob@acme.test'),
    ('opp_4', 'acc_3', 'Umbrella clinics rollout',  'Discovery',     310000.00, 10, '2027-03-31', 'bob@acme.test');

-- Go live: audit the four tables.
\pset footer off
\echo 'Tracked tables:'
SELECT table_name, entity_type, key_columns, excluded_columns, masked_columns
FROM audit.enable('accounts', exclude_columns => ARRAY['updated_at'], entity_name => 'Account')
UNION ALL
SELECT table_name, entity_type, key_columns, excluded_columns, masked_columns
FROM audit.enable('contacts', exclude_columns => ARRAY['updated_at'], mask_columns => ARRAY['phone'], entity_name => 'Contact')
UNION ALL
SELECT table_name, entity_type, key_columns, excluded_columns, masked_columns
FROM audit.enable('leads', exclude_columns => ARRAY['updated_at'], entity_name => 'Lead')
UNION ALL
SELECT table_name, entity_type, key_columns, excluded_columns, masked_columns
FROM audit.enable('opportunities', exclude_columns => ARRAY['updated_at'], entity_name => 'Opportunity');
