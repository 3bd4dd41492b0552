-- Types, expressions, joins, aggregates, ordering: the same answers either way.
CREATE TABLE item (id int PRIMARY KEY, name text, price numeric(10,2), tags text[], meta jsonb, at timestamptz);
INSERT INTO item VALUES
  (1, 'apple', 1.20, '{fruit,red}', '{"k": 1}', '2026-01-01 10:00+00'),
  (2, 'bread', 2.50, '{bakery}', '{"k": [1,2]}', '2026-01-02 11:30+00'),
  (3, 'cheese', 7.99, NULL, NULL, NULL),
  (4, 'dates', 4.10, '{fruit}', '{"nested": {"a": true}}', '2026-01-04 00:00+00');
SELECT * FROM item ORDER BY id;
SELECT count(*), sum(price), avg(price)::numeric(10,3), min(name), max(at) FROM item;
SELECT name, upper(name), length(name), price * 2 AS double FROM item WHERE price > 2 ORDER BY price DESC;
SELECT t, count(*) FROM item, unnest(tags) t GROUP BY t ORDER BY t;
SELECT meta->'k', meta #> '{nested,a}' FROM item ORDER BY id;
WITH cheap AS (SELECT * FROM item WHERE price < 5) SELECT string_agg(name, ',' ORDER BY name) FROM cheap;
SELECT a.name, b.name FROM item a JOIN item b ON a.id + 1 = b.id ORDER BY a.id;
SELECT id, name FROM item ORDER BY id LIMIT 2 OFFSET 1;
SELECT 1/0;
SELECT no_such_column FROM item;
SELECT 'after the errors', count(*) FROM item;
EXPLAIN (COSTS OFF) SELECT * FROM item WHERE id = 1;
SHOW standard_conforming_strings;
