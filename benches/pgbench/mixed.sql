\set r random(1, 100)
\set id random(1, 100000)
\set s random(1, 6)
\set a random(1000, 900000)
\if :r <= 70
UPDATE opportunities SET stage = 'Stage ' || :s, amount = :a, updated_at = now() WHERE id = :id;
\elif :r <= 90
INSERT INTO contacts (org_id, first_name, last_name, email, lifecycle_stage, notes)
VALUES ('org_7', 'Ada', 'Lovelace', 'ada@example.test', 'lead', 'Inbound from the pricing page.');
\else
DELETE FROM contacts WHERE id = :id;
\endif
