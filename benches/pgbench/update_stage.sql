\set id random(1, 100000)
\set s random(1, 1000000)
UPDATE opportunities SET stage = 'Stage ' || :s WHERE id = :id;
