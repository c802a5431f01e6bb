-- A small CRM, audited from the start.
CREATE EXTENSION IF NOT EXISTS audit;

CREATE TABLE accounts (
    id          text PRIMARY KEY,
    name        text NOT NULL,
    industry    text,
    owner_email text,
    updated_at  timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE contacts (
    id              text PRIMARY KEY,
    account_id      text REFERENCES accounts,
    first_name      text,
    last_name       text,
    email           text,
    phone           text,
    lifecycle_stage text,
    updated_at      timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE leads (
    id          text PRIMARY KEY,
    company     text,
    email       text,
    status      text,
    score       int,
    owner_email text,
    updated_at  timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE opportunities (
    id          text PRIMARY KEY,
    account_id  text REFERENCES accounts,
    name        text,
    stage       text,
    amount      numeric(12,2),
    probability int,
    close_date  date,
    owner_email text,
    updated_at  timestamptz NOT NULL DEFAULT now()
);

INSERT INTO accounts VALUES
    ('acc_1', 'Globex', 'Manufacturing', 'ann@acme.test'),
    ('acc_2', 'Initech', 'Software', 'bob@acme.test');
INSERT INTO contacts VALUES
    ('con_1', 'acc_1', 'Hank', 'Scorpio', 'hank@globex.test', '+1 555 0100', 'customer'),
    ('con_2', 'acc_2', 'Peter', 'Gibbons', 'peter@initech.test', '+1 555 0101', 'lead');
INSERT INTO opportunities VALUES
    ('opp_1', 'acc_1', 'Globex renewal', 'Qualification', 48000, 20, '2026-12-31', 'ann@acme.test'),
    ('opp_2', 'acc_2', 'Initech expansion', 'Proposal', 125000, 40, '2027-01-31', 'bob@acme.test'),
    ('opp_3', 'acc_2', 'Initech support', 'Qualification', 18000, 20, '2027-02-28', 'bob@acme.test');

SELECT table_name, entity_type, excluded_columns, masked_columns
FROM audit.enable('accounts', exclude_columns => ARRAY['updated_at'], entity_name => 'Account');
SELECT table_name, entity_type, excluded_columns, masked_columns
FROM audit.enable('contacts', exclude_columns => ARRAY['updated_at'], mask_columns => ARRAY['phone'], entity_name => 'Contact');
SELECT table_name, entity_type, excluded_columns, masked_columns
FROM audit.enable('leads', exclude_columns => ARRAY['updated_at'], entity_name => 'Lead');
SELECT table_name, entity_type, excluded_columns, masked_columns
FROM audit.enable('opportunities', exclude_columns => ARRAY['updated_at'], entity_name => 'Opportunity');
