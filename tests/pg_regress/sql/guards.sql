-- The trail is append-only; bad input is refused with a clear error.
SET timezone = 'UTC';
\set VERBOSITY default
UPDATE audit.events SET actor = 'mallory';
DELETE FROM audit.events;
TRUNCATE audit.events;
SELECT audit.enable('no_such_table');
CREATE VIEW open_deals AS SELECT * FROM opportunities WHERE stage <> 'Closed Won';
SELECT audit.enable('open_deals');
CREATE TABLE notes (body text);
SELECT audit.enable('notes');
SELECT audit.enable('opportunities', mask_columns => ARRAY['nope']);
SELECT audit.set_context(source => 'carrier pigeon');
SELECT audit.log_event('UPDATE');
SELECT audit.log_event('drop table');
SELECT count(*) AS events_unchanged FROM audit.events;
