\set id random(1, 100000)
\set s random(1, 1000000)
WITH u AS (UPDATE opportunities SET stage = 'Stage ' || :s WHERE id = :id RETURNING id) SELECT id, repeat('x', 250) FROM u;
