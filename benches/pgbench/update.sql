\set id random(1, 100000)
\set s random(1, 6)
\set a random(1000, 900000)
UPDATE opportunities SET stage = 'Stage ' || :s, amount = :a, updated_at = now() WHERE id = :id;
