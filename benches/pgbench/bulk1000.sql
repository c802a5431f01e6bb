\set s random(1, 99000)
UPDATE opportunities SET probability = (probability + 1) % 100 WHERE id BETWEEN :s AND :s + 999;
