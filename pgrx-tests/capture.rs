//! Capture: what each kind of change records.

#[pgrx::pg_schema]
mod tests {
    use crate::tests::{assert_error, count, error_of, json, one, run};
    use pgrx::prelude::*;
    use serde_json::json;

    /// The changes of the events of `table` and `action`, ordered by their text:
    /// in a test every event is pending (no id), so nothing orders them in time.
    fn changes_of(table: &str, action: &str) -> Vec<serde_json::Value> {
        serde_json::from_value(json(&format!(
            "SELECT coalesce(jsonb_agg(changes ORDER BY changes::text), '[]') FROM audit.events
              WHERE entity_type = '{table}' AND action = '{action}'"
        )))
        .unwrap()
    }

    /// The test database is the one `audit.database` names (src/lib.rs
    /// `pg_test`): capture works, and the worker serves it.
    #[pg_test]
    fn status_reports_capture_ready_and_the_worker_running() {
        // The worker starts (and restarts) a few seconds after the server.
        run("DO $$ BEGIN
                FOR i IN 1..300 LOOP
                    EXIT WHEN (SELECT worker_running FROM audit.status());
                    PERFORM pg_sleep(0.1);
                END LOOP;
             END $$");
        assert_eq!(
            json("SELECT jsonb_build_object('ready', capture_ready, 'problem', problem, 'hint', hint,
                         'worker', worker_running, 'slot', replication_slot = 'audit_' || d.oid,
                         'stored', stored_through IS NOT NULL, 'served', current_setting('audit.database') = d.datname)
                    FROM audit.status(), pg_database d WHERE d.datname = current_database()"),
            json!({"ready": true, "problem": null, "hint": null, "worker": true, "slot": true, "stored": true, "served": true})
        );
        assert_eq!(
            count("SELECT 1 FROM pg_replication_slots s, audit.status() st WHERE s.slot_name = st.replication_slot AND s.slot_type = 'physical'"),
            1
        );
        // sync waits for what committed before it; this transaction's own
        // events are never among them: they stay pending. (An application
        // event: audit.enable() could create partitions, whose locks the
        // worker would wait for until this transaction ends.)
        run("SELECT audit.log_event('LOGIN', 'cap_status', 'pending')");
        assert_eq!(one::<bool>("SELECT audit.sync(30000)"), true);
        assert_eq!(
            count("SELECT 1 FROM audit.events WHERE entity_type = 'cap_status' AND id IS NULL"),
            1
        );
    }

    #[pg_test]
    fn insert_records_new_non_null_fields() {
        run(
            "CREATE TABLE cap_ins (id int PRIMARY KEY, name text, note text, amount numeric(12,2))",
        );
        run("SELECT audit.enable('cap_ins')");
        run("INSERT INTO cap_ins VALUES (1, 'Acme', NULL, 1200.5)");
        assert_eq!(
            changes_of("cap_ins", "INSERT"),
            vec![
                json!({"id": {"new": "1"}, "name": {"new": "Acme"}, "amount": {"new": "1200.50"}})
            ]
        );
        assert_eq!(
            one::<String>("SELECT entity_id FROM audit.events WHERE entity_type = 'cap_ins'"),
            "1"
        );
        // One pending event of this transaction, alone in its chunk, without bulk metadata.
        assert_eq!(
            count("SELECT 1 FROM audit.events WHERE entity_type = 'cap_ins' AND txid = pg_current_xact_id() AND metadata IS NULL"),
            1
        );
        assert_eq!(
            one::<String>("SELECT event_count || ' ' || entity_ids::text FROM audit.chunks WHERE entity_type = 'cap_ins'"),
            "1 {1}"
        );
    }

    #[pg_test]
    fn update_records_only_changed_fields() {
        run("CREATE TABLE cap_upd (id int PRIMARY KEY, stage text, amount numeric, owner text)");
        run("INSERT INTO cap_upd VALUES (7, 'Qualification', 100, 'ann')");
        run("SELECT audit.enable('cap_upd')");
        run("UPDATE cap_upd SET stage = 'Proposal', amount = 100, owner = NULL WHERE id = 7");
        assert_eq!(
            changes_of("cap_upd", "UPDATE"),
            vec![
                json!({"stage": {"old": "Qualification", "new": "Proposal"}, "owner": {"old": "ann", "new": null}})
            ]
        );
        // A no-op UPDATE writes no event at all.
        run("UPDATE cap_upd SET stage = stage, amount = amount WHERE id = 7");
        assert_eq!(changes_of("cap_upd", "UPDATE").len(), 1);
        // numeric 100 -> 100.00 differs in text, so it is a change.
        run("UPDATE cap_upd SET amount = 100.00 WHERE id = 7");
        assert_eq!(
            changes_of("cap_upd", "UPDATE"),
            vec![
                json!({"amount": {"old": "100", "new": "100.00"}}),
                json!({"stage": {"old": "Qualification", "new": "Proposal"}, "owner": {"old": "ann", "new": null}})
            ]
        );
    }

    #[pg_test]
    fn delete_records_every_old_field_and_truncate_one_event() {
        run("CREATE TABLE cap_del (id int PRIMARY KEY, name text, note text)");
        run("INSERT INTO cap_del VALUES (1, 'a', NULL), (2, 'b', 'x')");
        run("SELECT audit.enable('cap_del')");
        run("DELETE FROM cap_del WHERE id = 1");
        assert_eq!(
            changes_of("cap_del", "DELETE"),
            vec![json!({"id": {"old": "1"}, "name": {"old": "a"}, "note": {"old": null}})]
        );
        run("TRUNCATE cap_del");
        assert_eq!(count("SELECT 1 FROM audit.events WHERE entity_type = 'cap_del' AND action = 'TRUNCATE' AND entity_id IS NULL AND changes IS NULL"), 1);
    }

    #[pg_test]
    fn excluded_columns_are_ignored_and_masked_values_never_stored() {
        run("CREATE TABLE cap_mask (id int PRIMARY KEY, email text, ssn text, updated_at timestamptz)");
        run("SELECT audit.enable('cap_mask', exclude_columns => ARRAY['updated_at'], mask_columns => ARRAY['ssn'])");
        run("INSERT INTO cap_mask VALUES (1, 'a@x.test', '123-45-6789', now())");
        run("UPDATE cap_mask SET updated_at = now() + interval '1 hour' WHERE id = 1");
        assert_eq!(
            changes_of("cap_mask", "UPDATE").len(),
            0,
            "excluded-only update writes nothing"
        );
        run("UPDATE cap_mask SET ssn = '987-65-4321' WHERE id = 1");
        assert_eq!(
            changes_of("cap_mask", "UPDATE"),
            vec![json!({"ssn": {"masked": true}})]
        );
        run("DELETE FROM cap_mask");
        assert_eq!(
            changes_of("cap_mask", "INSERT"),
            vec![
                json!({"id": {"new": "1"}, "email": {"new": "a@x.test"}, "ssn": {"masked": true}})
            ]
        );
        assert_eq!(count("SELECT 1 FROM audit.events WHERE entity_type = 'cap_mask' AND (changes::text LIKE '%-45-%' OR changes::text LIKE '%-65-%' OR changes ? 'updated_at')"), 0);
    }

    /// Until the materializer numbers them (after commit), a bulk statement's
    /// events carry no statement id: they share their transaction and the
    /// statement's row_count, in chunks of up to 100 events.
    #[pg_test]
    fn bulk_statement_is_pending_in_chunks_of_100_with_its_row_count() {
        run("CREATE TABLE cap_bulk (id int PRIMARY KEY, stage text)");
        run("INSERT INTO cap_bulk SELECT g, 'Lead' FROM generate_series(1, 2500) g");
        run("SELECT audit.enable('cap_bulk')");
        run("UPDATE cap_bulk SET stage = 'Qualified' WHERE id <= 2100");
        assert_eq!(
            count("SELECT 1 FROM audit.events WHERE entity_type = 'cap_bulk'"),
            2100
        );
        assert_eq!(
            count("SELECT DISTINCT entity_id FROM audit.events WHERE entity_type = 'cap_bulk'"),
            2100
        );
        assert_eq!(
            count("SELECT 1 FROM audit.events WHERE entity_type = 'cap_bulk' AND txid = pg_current_xact_id()
                     AND metadata = '{\"row_count\": 2100}' AND statement_id IS NULL AND id IS NULL"),
            2100,
            "no bulk_operation_id before the events are numbered"
        );
        assert_eq!(
            json("SELECT jsonb_agg(DISTINCT event_count) FROM audit.chunks WHERE entity_type = 'cap_bulk'"),
            json!([100])
        );
        assert_eq!(
            count("SELECT 1 FROM audit.chunks WHERE entity_type = 'cap_bulk' AND id IS NULL AND block_id IS NULL"),
            21
        );
        // A single-row statement carries no bulk metadata.
        run("UPDATE cap_bulk SET stage = 'Won' WHERE id = 2500");
        assert_eq!(count("SELECT 1 FROM audit.events WHERE entity_type = 'cap_bulk' AND entity_id = '2500' AND metadata IS NULL"), 1);
        assert_eq!(
            count("SELECT 1 FROM audit.chunks WHERE entity_type = 'cap_bulk'"),
            22
        );
    }

    #[pg_test]
    fn every_builtin_type_is_recorded_as_text() {
        run("CREATE TYPE cap_mood AS ENUM ('sad', 'happy')");
        run("CREATE DOMAIN cap_positive AS int CHECK (VALUE > 0)");
        run("CREATE TYPE cap_pair AS (a int, b text)");
        run("CREATE TABLE cap_types (
                id bigint PRIMARY KEY, n numeric, ts timestamptz, d date, arr int[], tarr text[], j jsonb, js json,
                b bytea, mood cap_mood, pos cap_positive, pair cap_pair, flag boolean, u uuid, addr inet,
                span interval, f float8, r int4range, c char(3), x xml, pt point, bits bit varying(8))");
        // Whatever the session's style, values are stored ISO, UTC, hex.
        run("SET LOCAL timezone = 'America/New_York'");
        run("SET LOCAL datestyle = 'SQL, DMY'");
        run("SET LOCAL intervalstyle = 'sql_standard'");
        run("SET LOCAL bytea_output = 'escape'");
        run("SET LOCAL extra_float_digits = 3");
        run("INSERT INTO cap_types (id) VALUES (1)");
        run("SELECT audit.enable('cap_types')");
        run("UPDATE cap_types SET n = 12345678901234567890.123456789, ts = '2026-05-01 10:00:00.123456+00',
                d = '2026-05-01', arr = '{1,NULL,3}', tarr = ARRAY['a b', 'c\"d'], j = '{\"k\": [1, 2.50]}',
                js = '{\"z\" :  1}', b = '\\xdeadbeef', mood = 'happy', pos = 5, pair = ROW(1, 'x y'),
                flag = true, u = 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', addr = '203.0.113.0/24',
                span = '1 day 2 hours', f = 1.5, r = '[1,5)', c = 'ab', x = '<a>1</a>', pt = '(1,2)', bits = B'101'
             WHERE id = 1");
        let changes = json("SELECT changes FROM audit.events WHERE entity_type = 'cap_types' AND action = 'UPDATE'");
        let expected = [
            ("n", "12345678901234567890.123456789"),
            ("ts", "2026-05-01 10:00:00.123456+00"),
            ("d", "2026-05-01"),
            ("arr", "{1,NULL,3}"),
            ("tarr", "{\"a b\",\"c\\\"d\"}"),
            ("j", "{\"k\": [1, 2.50]}"),
            ("js", "{\"z\" :  1}"),
            ("b", "\\xdeadbeef"),
            ("mood", "happy"),
            ("pos", "5"),
            ("pair", "(1,\"x y\")"),
            ("flag", "t"),
            ("u", "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"),
            ("addr", "203.0.113.0/24"),
            ("span", "1 day 02:00:00"),
            ("f", "1.5"),
            ("r", "[1,5)"),
            ("c", "ab "),
            ("x", "<a>1</a>"),
            ("pt", "(1,2)"),
            ("bits", "101"),
        ];
        for (field, text) in expected {
            assert_eq!(changes[field], json!({"old": null, "new": text}), "{field}");
        }
        assert_eq!(changes.as_object().unwrap().len(), expected.len());
        assert_eq!(
            one::<String>("SELECT '2026-05-01'::date::text || ' ' || '1 day 2 hours'::interval::text || ' ' || '\\xde'::bytea::text"),
            "01/05/2026 1 2:00:00 \\336",
            "the session keeps its own style"
        );
        // And back to NULL.
        run("UPDATE cap_types SET n = NULL, arr = NULL, mood = NULL WHERE id = 1");
        let back = json("SELECT changes FROM audit.events WHERE entity_type = 'cap_types' AND action = 'UPDATE' AND changes->'mood'->'new' = 'null'");
        assert_eq!(back["mood"], json!({"old": "happy", "new": null}));
        assert_eq!(back.as_object().unwrap().len(), 3);
    }

    #[pg_test]
    fn multi_megabyte_values_are_kept_whole() {
        run("CREATE TABLE cap_big (id int PRIMARY KEY, body text, blob bytea)");
        run("SELECT audit.enable('cap_big')");
        run("INSERT INTO cap_big VALUES (1, repeat('a', 5000000), decode(repeat('ff', 1000000), 'hex'))");
        run("UPDATE cap_big SET body = repeat('b', 5000000) || 'end' WHERE id = 1");
        assert_eq!(one::<i32>("SELECT length(changes->'body'->>'new') FROM audit.events WHERE entity_type = 'cap_big' AND action = 'UPDATE'"), 5_000_003);
        assert_eq!(one::<i32>("SELECT length(changes->'body'->>'old') FROM audit.events WHERE entity_type = 'cap_big' AND action = 'UPDATE'"), 5_000_000);
        assert_eq!(one::<bool>("SELECT NOT changes ? 'blob' FROM audit.events WHERE entity_type = 'cap_big' AND action = 'UPDATE'"), true, "untouched toasted column is unchanged");
        assert_eq!(one::<i32>("SELECT length(changes->'blob'->>'new') FROM audit.events WHERE entity_type = 'cap_big' AND action = 'INSERT'"), 2_000_002);
        run("DELETE FROM cap_big");
        assert_eq!(one::<i32>("SELECT length(changes->'body'->>'old') FROM audit.events WHERE entity_type = 'cap_big' AND action = 'DELETE'"), 5_000_003);
    }

    #[pg_test]
    fn values_compressed_in_the_row_are_read_whole() {
        run("CREATE TABLE cap_packed (id int PRIMARY KEY, body text)");
        run("SELECT audit.enable('cap_packed')");
        run("INSERT INTO cap_packed VALUES (1, repeat('x', 3000))");
        assert_eq!(
            one::<bool>("SELECT pg_column_compression(body) IS NOT NULL AND pg_column_size(body) < 3000 FROM cap_packed"),
            true,
            "the stored value is compressed inline, so the old row's value needs detoasting"
        );
        // Same text, fresh datum: the bytes differ from the stored compressed ones.
        run("UPDATE cap_packed SET body = repeat('x', 2999) || 'x' WHERE id = 1");
        assert_eq!(
            changes_of("cap_packed", "UPDATE"),
            Vec::<serde_json::Value>::new(),
            "equal text is no change"
        );
        run("UPDATE cap_packed SET body = repeat('y', 3000) WHERE id = 1");
        assert_eq!(
            changes_of("cap_packed", "UPDATE"),
            vec![json!({"body": {"old": "x".repeat(3000), "new": "y".repeat(3000)}})]
        );
    }

    /// Numerics are written by capture from their stored digits: every value,
    /// in the short and the long format, special or compressed (left to
    /// `numeric_out`), must read as PostgreSQL prints it.
    #[pg_test]
    fn numerics_read_as_postgresql_prints_them() {
        run("CREATE TABLE cap_numerics (id int8 PRIMARY KEY, n numeric, money numeric(12,2), fine numeric(40,20))");
        run("SELECT audit.enable('cap_numerics')");
        run("INSERT INTO cap_numerics VALUES
               (1, 0, 0, 0), (2, -0.0, 0.001, -0.000000000000000000001),
               (3, 'NaN', 9999999999.99, 12345678901234567890.12345678901234567890),
               (4, 'Infinity', -9999999999.99, 1e-20), (5, '-Infinity', NULL, -1e19),
               (6, 1e-1000, 100.5, 0.5), (7, 1e1000, 10000, 10000.0001),
               (8, -123456789.000000000001, 0.1, 99999999999999999999),
               (9, 1.000100010001, 5, 0.00000001),
               (10, repeat('9', 5000)::numeric, 1, 1)");
        run("INSERT INTO cap_numerics
             SELECT 100 + g, round((random() - 0.5)::numeric * 10::numeric ^ (random() * 60 - 30)::int, (random() * 40)::int),
                    round((random() * 2e9 - 1e9)::numeric, 2), (random() * 1e19 - 5e18)::numeric(40,20)
               FROM generate_series(1, 2000) g");
        run("UPDATE cap_numerics SET n = n + 1, money = money / 2 WHERE id > 100");
        assert_eq!(
            count(
                "SELECT 1 FROM cap_numerics t JOIN audit.events e
                   ON e.entity_type = 'cap_numerics' AND e.action = 'INSERT' AND e.entity_id = t.id::text
                  WHERE e.changes->'n'->>'new' IS DISTINCT FROM (CASE WHEN t.id > 100 THEN t.n - 1 ELSE t.n END)::text
                     OR e.changes->'fine'->>'new' IS DISTINCT FROM t.fine::text"
            ),
            0
        );
        assert_eq!(
            count(
                "SELECT 1 FROM cap_numerics t JOIN audit.events e
                   ON e.entity_type = 'cap_numerics' AND e.action = 'UPDATE' AND e.entity_id = t.id::text
                  WHERE e.changes->'n' IS DISTINCT FROM jsonb_build_object('old', (t.n - 1)::text, 'new', t.n::text)
                     OR e.changes->'money'->>'new' IS DISTINCT FROM t.money::text"
            ),
            0
        );
        assert_eq!(
            one::<String>("SELECT e.changes->'money'->>'new' FROM audit.events e WHERE e.entity_type = 'cap_numerics' AND e.entity_id = '3'"),
            "9999999999.99"
        );
        assert_eq!(
            one::<i64>("SELECT length(e.changes->'n'->>'new') FROM audit.events e WHERE e.entity_type = 'cap_numerics' AND e.entity_id = '10'"),
            5000,
            "a compressed value, printed by numeric_out"
        );
    }

    /// Integers, dates and timestamps are written by capture itself
    /// (audit_core::pg_text), not by their output functions: every value must
    /// read as PostgreSQL prints it in the canonical style, whatever the
    /// session's style, with years outside 1 to 9999 left to PostgreSQL.
    #[pg_test]
    fn integers_dates_and_timestamps_read_as_postgresql_prints_them() {
        run("CREATE TABLE cap_types (id int8 PRIMARY KEY, i2 int2, i4 int4, d date, ts timestamp, tstz timestamptz)");
        run("SELECT audit.enable('cap_types')");
        run("SET LOCAL timezone = 'Asia/Kathmandu'");
        run("SET LOCAL DateStyle = 'SQL, DMY'");
        run("INSERT INTO cap_types VALUES
               (-9223372036854775808, -32768, -2147483648, '0001-01-01', '0001-01-01 00:00:00', '0001-01-01 00:00:00+00'),
               (9223372036854775807, 32767, 2147483647, '9999-12-31', '9999-12-31 23:59:59.999999', '9999-12-31 23:59:59.999999+00'),
               (0, 0, 0, 'infinity', 'infinity', 'infinity'),
               (-1, -1, -1, '-infinity', '-infinity', '-infinity'),
               (1, 1, 1, '0001-12-31 BC', '0044-03-15 12:00:00 BC', '0001-12-31 23:59:59.5+00 BC'),
               (2, 2, 2, '10000-01-01', '12345-06-07 08:09:10.11', '294276-12-31 23:59:59.999999+00'),
               (3, 3, 3, '2000-02-29', '2026-05-01 10:00:00.1', '2026-05-01 10:00:00.000001+00'),
               (4, NULL, NULL, NULL, NULL, '0001-01-01 00:00:00+05:45')");
        run("INSERT INTO cap_types
             SELECT 100 + g, (random() * 65535 - 32768)::int2, (random() * 4e9 - 2e9)::int4,
                    date '0001-01-01' + (random() * 3652058)::int,
                    timestamp '0001-01-01' + random() * interval '3652058 days',
                    timestamptz '0001-01-01 00:00+00' + random() * interval '3652058 days'
               FROM generate_series(1, 2000) g");
        run(
            "UPDATE cap_types SET d = d + 1, tstz = tstz + interval '1 microsecond' WHERE id > 100",
        );
        run("SET LOCAL timezone = 'UTC'");
        run("SET LOCAL DateStyle = 'ISO, MDY'");
        let differing = |action: &str, condition: &str| {
            count(&format!(
                "SELECT 1 FROM cap_types t JOIN audit.events e
                   ON e.entity_type = 'cap_types' AND e.action = '{action}' AND e.entity_id = t.id::text
                  WHERE {condition}"
            ))
        };
        assert_eq!(
            differing("INSERT", "true"),
            2008,
            "one event per row, its key as int8 prints"
        );
        assert_eq!(
            differing(
                "INSERT",
                "e.changes->'i2'->>'new' IS DISTINCT FROM t.i2::text
                 OR e.changes->'i4'->>'new' IS DISTINCT FROM t.i4::text
                 OR e.changes->'d'->>'new' IS DISTINCT FROM (CASE WHEN t.id > 100 THEN t.d - 1 ELSE t.d END)::text
                 OR e.changes->'ts'->>'new' IS DISTINCT FROM t.ts::text
                 OR e.changes->'tstz'->>'new' IS DISTINCT FROM
                    (CASE WHEN t.id > 100 THEN t.tstz - interval '1 microsecond' ELSE t.tstz END)::text"
            ),
            0
        );
        assert_eq!(
            differing(
                "UPDATE",
                "e.changes->'d' IS DISTINCT FROM jsonb_build_object('old', (t.d - 1)::text, 'new', t.d::text)
                 OR e.changes->'tstz' IS DISTINCT FROM jsonb_build_object(
                        'old', (t.tstz - interval '1 microsecond')::text, 'new', t.tstz::text)"
            ),
            0
        );
        assert_eq!(
            one::<String>("SELECT e.changes->'tstz'->>'new' FROM audit.events e WHERE e.entity_type = 'cap_types' AND e.entity_id = '4'"),
            "0001-12-31 18:15:00+00 BC"
        );
    }

    /// Capture calls C functions in batches under one guard (src/unguarded.rs):
    /// an ERROR raised inside one (here an output function's) must fail the
    /// statement with that error, restore the session's output style, and
    /// leave capture working for the next statement.
    #[pg_test]
    fn an_error_while_printing_a_value_fails_the_statement_cleanly() {
        run("CREATE TYPE cap_unprintable");
        run(
            "CREATE FUNCTION cap_unprintable_in(cstring) RETURNS cap_unprintable
               LANGUAGE internal IMMUTABLE STRICT AS 'oidin'",
        );
        run(
            "CREATE FUNCTION cap_unprintable_out(cap_unprintable) RETURNS cstring
               LANGUAGE internal IMMUTABLE STRICT AS 'enum_out'",
        );
        run(
            "CREATE TYPE cap_unprintable (INPUT = cap_unprintable_in, OUTPUT = cap_unprintable_out,
               INTERNALLENGTH = 4, PASSEDBYVALUE, ALIGNMENT = int4)",
        );
        run("CREATE TABLE cap_err (id int PRIMARY KEY, v cap_unprintable, at timestamptz)");
        run("SELECT audit.enable('cap_err')");
        run("SET LOCAL DateStyle = 'SQL, DMY'");
        run("SET LOCAL timezone = 'Asia/Kathmandu'");
        let error = error_of("INSERT INTO cap_err VALUES (1, '4242', now())");
        assert!(
            error.starts_with("22P03: ") && error.contains("invalid internal value for enum: 4242"),
            "{error}"
        );
        assert_eq!(one::<String>("SHOW DateStyle"), "SQL, DMY");
        assert_eq!(one::<String>("SHOW timezone"), "Asia/Kathmandu");
        run("INSERT INTO cap_err (id, at) VALUES (2, '2026-05-01 10:00+00')");
        assert_eq!(
            changes_of("cap_err", "INSERT"),
            vec![json!({"at": {"new": "2026-05-01 10:00:00+00"}, "id": {"new": "2"}})]
        );
    }

    #[pg_test]
    fn columns_added_dropped_or_renamed_after_enable() {
        run("CREATE TABLE cap_ddl (id int PRIMARY KEY, a text, secret text, gone text)");
        run("INSERT INTO cap_ddl VALUES (1, 'a', 's', 'g')");
        run("SELECT audit.enable('cap_ddl', mask_columns => ARRAY['secret'])");
        run("ALTER TABLE cap_ddl ADD COLUMN added int");
        run("ALTER TABLE cap_ddl DROP COLUMN gone");
        run("ALTER TABLE cap_ddl RENAME COLUMN secret TO hidden");
        run("ALTER TABLE cap_ddl RENAME COLUMN a TO title");
        run("UPDATE cap_ddl SET added = 3, hidden = 't', title = 'b' WHERE id = 1");
        assert_eq!(
            changes_of("cap_ddl", "UPDATE"),
            vec![
                json!({"added": {"old": null, "new": "3"}, "hidden": {"masked": true}, "title": {"old": "a", "new": "b"}})
            ]
        );
        assert_eq!(one::<String>("SELECT masked_columns::text FROM audit.tracked_tables WHERE table_name = 'cap_ddl'::regclass"), "{hidden}");
    }

    #[pg_test]
    fn partitioned_table_is_captured_as_its_parent() {
        run("CREATE TABLE cap_part (id int, region text, amount int, PRIMARY KEY (id, region)) PARTITION BY LIST (region)");
        run("CREATE TABLE cap_part_eu PARTITION OF cap_part FOR VALUES IN ('eu')");
        run("SELECT audit.enable('cap_part', entity_name => 'Deal')");
        // Created after enable: gets the capture triggers too.
        run("CREATE TABLE cap_part_us PARTITION OF cap_part FOR VALUES IN ('us')");
        run("INSERT INTO cap_part VALUES (1, 'eu', 10), (2, 'us', 20)");
        run("UPDATE cap_part_us SET amount = 21");
        run("UPDATE cap_part SET region = 'us' WHERE id = 1");
        run("DELETE FROM cap_part_eu");
        assert_eq!(
            count("SELECT 1 FROM audit.events WHERE entity_type = 'Deal' AND action = 'INSERT'"),
            2
        );
        assert_eq!(
            json("SELECT changes FROM audit.events WHERE entity_type = 'Deal' AND action = 'UPDATE' AND entity_id = '[\"2\",\"us\"]'"),
            json!({"amount": {"old": "20", "new": "21"}})
        );
        assert_eq!(one::<String>("SELECT metadata->>'partition' FROM audit.events WHERE entity_type = 'Deal' AND entity_id = '[\"2\",\"us\"]' AND action = 'UPDATE'"), "public.cap_part_us");
        // Moving a row between partitions is one UPDATE of the parent.
        assert_eq!(
            json("SELECT changes FROM audit.events WHERE entity_type = 'Deal' AND action = 'UPDATE' AND entity_id = '[\"1\",\"us\"]'"),
            json!({"region": {"old": "eu", "new": "us"}})
        );
        assert_eq!(
            count("SELECT 1 FROM audit.events WHERE entity_type = 'Deal' AND action = 'DELETE'"),
            0,
            "eu is empty by then"
        );
        assert_error(
            "SELECT audit.enable('cap_part_eu')",
            "42809",
            "is a partition",
        );
    }

    #[pg_test]
    fn composite_and_explicit_keys() {
        run("CREATE TABLE cap_nokey (code text, name text)");
        assert_error(
            "SELECT audit.enable('cap_nokey')",
            "42P16",
            "has no primary key",
        );
        run("SELECT audit.enable('cap_nokey', key_columns => ARRAY['code'])");
        run("INSERT INTO cap_nokey VALUES ('X-1', 'x')");
        assert_eq!(
            one::<String>("SELECT entity_id FROM audit.events WHERE entity_type = 'cap_nokey'"),
            "X-1"
        );
        run("CREATE TABLE cap_comp (org text, num int, v text, PRIMARY KEY (org, num))");
        run("SELECT audit.enable('cap_comp')");
        run("INSERT INTO cap_comp VALUES ('acme, \"inc\"', 42, 'v')");
        assert_eq!(
            one::<String>("SELECT entity_id FROM audit.events WHERE entity_type = 'cap_comp'"),
            r#"["acme, \"inc\"","42"]"#
        );
        // A key change is recorded under the new key.
        run("UPDATE cap_comp SET num = 43");
        assert_eq!(one::<String>("SELECT entity_id FROM audit.events WHERE entity_type = 'cap_comp' AND action = 'UPDATE'"), r#"["acme, \"inc\"","43"]"#);
    }

    #[pg_test]
    fn rolled_back_savepoint_leaves_no_event() {
        run("CREATE TABLE cap_sp (id int PRIMARY KEY, v text)");
        run("SELECT audit.enable('cap_sp')");
        run("INSERT INTO cap_sp VALUES (1, 'kept')");
        run("DO $$ BEGIN
                BEGIN
                    UPDATE cap_sp SET v = 'lost';
                    INSERT INTO cap_sp VALUES (2, 'lost');
                    RAISE EXCEPTION 'roll back to the savepoint';
                EXCEPTION WHEN raise_exception THEN NULL;
                END;
             END $$");
        assert_eq!(
            count("SELECT 1 FROM audit.events WHERE entity_type = 'cap_sp'"),
            1
        );
        assert_eq!(count("SELECT 1 FROM audit.events WHERE entity_type = 'cap_sp' AND changes::text LIKE '%lost%'"), 0);
        assert_eq!(
            count("SELECT 1 FROM audit.chunks WHERE entity_type = 'cap_sp'"),
            1
        );
    }

    /// Pending events belong to the subtransaction that wrote them: released
    /// into its parent, they go with the parent when that is rolled back;
    /// those of the other subtransactions stay.
    #[pg_test]
    fn rolled_back_subtransaction_takes_its_pending_events_and_its_children() {
        run("CREATE TABLE cap_sub (id int PRIMARY KEY, v text)");
        run("SELECT audit.enable('cap_sub')");
        run("INSERT INTO cap_sub VALUES (1, 'before')");
        // (A PL/pgSQL block with an EXCEPTION clause runs in a subtransaction.)
        run("DO $$ BEGIN
                BEGIN
                    INSERT INTO cap_sub VALUES (2, 'kept');
                    BEGIN
                        INSERT INTO cap_sub VALUES (3, 'kept child');
                    EXCEPTION WHEN division_by_zero THEN NULL;
                    END;
                EXCEPTION WHEN division_by_zero THEN NULL;
                END;
                BEGIN
                    INSERT INTO cap_sub VALUES (4, 'lost');
                    PERFORM audit.log_event('LOGIN', 'cap_sub', 'lost');
                    BEGIN
                        UPDATE cap_sub SET v = 'lost child' WHERE id = 1;
                    EXCEPTION WHEN division_by_zero THEN NULL;
                    END;
                    RAISE EXCEPTION 'roll back this subtransaction and its released child';
                EXCEPTION WHEN raise_exception THEN NULL;
                END;
                BEGIN
                    INSERT INTO cap_sub VALUES (6, 'kept parent');
                    BEGIN
                        UPDATE cap_sub SET v = 'lost' WHERE id = 2;
                        RAISE EXCEPTION 'roll back the child only';
                    EXCEPTION WHEN raise_exception THEN NULL;
                    END;
                EXCEPTION WHEN division_by_zero THEN NULL;
                END;
             END $$");
        run("INSERT INTO cap_sub VALUES (5, 'after')");
        assert_eq!(
            one::<String>("SELECT string_agg(action || ' ' || entity_id, ', ' ORDER BY entity_id) FROM audit.events WHERE entity_type = 'cap_sub'"),
            "INSERT 1, INSERT 2, INSERT 3, INSERT 5, INSERT 6"
        );
        assert_eq!(
            count("SELECT 1 FROM audit.chunks WHERE entity_type = 'cap_sub'"),
            5
        );
        assert_eq!(
            count("SELECT 1 FROM audit.events WHERE changes::text LIKE '%lost%' OR entity_id = 'lost'"),
            0
        );
        assert_eq!(
            one::<String>("SELECT string_agg(v, ',' ORDER BY id) FROM cap_sub"),
            "before,kept,kept child,after,kept parent",
            "the table agrees with the trail"
        );
    }

    #[pg_test]
    fn replicated_changes_are_captured_only_when_asked() {
        run("CREATE TABLE cap_repl (id int PRIMARY KEY, v text)");
        run("CREATE TABLE cap_norepl (id int PRIMARY KEY, v text)");
        run("SELECT audit.enable('cap_repl', capture_replicated => true)");
        run("SELECT audit.enable('cap_norepl')");
        // This is how the logical-replication apply worker runs.
        run("SET LOCAL session_replication_role = replica");
        run("INSERT INTO cap_repl VALUES (1, 'a'), (2, 'b')");
        run("UPDATE cap_repl SET v = 'c' WHERE id = 1");
        run("DELETE FROM cap_repl WHERE id = 2");
        run("INSERT INTO cap_norepl VALUES (1, 'a')");
        run("SET LOCAL session_replication_role = origin");
        assert_eq!(
            count("SELECT 1 FROM audit.events WHERE entity_type = 'cap_repl'"),
            4
        );
        assert_eq!(json("SELECT changes FROM audit.events WHERE entity_type = 'cap_repl' AND action = 'UPDATE'"), json!({"v": {"old": "a", "new": "c"}}));
        assert_eq!(
            count("SELECT 1 FROM audit.events WHERE entity_type = 'cap_norepl'"),
            0
        );
        // In normal operation the replica trigger stays silent: one event per change.
        run("INSERT INTO cap_repl VALUES (3, 'x')");
        assert_eq!(
            count("SELECT 1 FROM audit.events WHERE entity_type = 'cap_repl' AND entity_id = '3'"),
            1
        );
    }

    #[pg_test]
    fn enable_twice_updates_options_and_disable_stops_capture() {
        run("CREATE TABLE cap_opts (id int PRIMARY KEY, a text, b text)");
        run("SELECT audit.enable('cap_opts')");
        run("SELECT audit.enable('cap_opts', exclude_columns => ARRAY['b'], entity_name => 'Option')");
        assert_eq!(
            count("SELECT 1 FROM audit.tracked_tables WHERE table_name = 'cap_opts'::regclass"),
            1
        );
        assert_eq!(one::<String>("SELECT entity_type || ' ' || excluded_columns::text FROM audit.tracked_tables WHERE table_name = 'cap_opts'::regclass"), "Option {b}");
        assert_eq!(count("SELECT 1 FROM pg_trigger WHERE tgrelid = 'cap_opts'::regclass AND tgname LIKE 'audit_capture_%'"), 4);
        run("INSERT INTO cap_opts VALUES (1, 'x', 'y')");
        assert_eq!(
            json("SELECT changes FROM audit.events WHERE entity_type = 'Option'"),
            json!({"id": {"new": "1"}, "a": {"new": "x"}})
        );
        assert_eq!(count("SELECT 1 FROM audit.events WHERE action = 'CONFIG_CHANGE' AND entity_id = 'public.cap_opts'"), 2);
        assert_eq!(one::<bool>("SELECT audit.disable('cap_opts')"), true);
        assert_eq!(one::<bool>("SELECT audit.disable('cap_opts')"), false);
        run("INSERT INTO cap_opts VALUES (2, 'x', 'y')");
        assert_eq!(
            count("SELECT 1 FROM audit.events WHERE entity_type = 'Option'"),
            1
        );
        assert_eq!(count("SELECT 1 FROM pg_trigger WHERE tgrelid = 'cap_opts'::regclass AND tgname LIKE 'audit_capture_%'"), 0);
    }

    #[pg_test]
    fn enable_refuses_bad_targets_with_clear_errors() {
        run("CREATE TABLE cap_bad (id int PRIMARY KEY, a text, b text)");
        run("CREATE VIEW cap_bad_v AS SELECT * FROM cap_bad");
        run("CREATE TEMP TABLE cap_bad_tmp (id int PRIMARY KEY)");
        assert!(error_of("SELECT audit.enable('cap_missing')")
            .starts_with("42P01: relation \"cap_missing\" does not exist"));
        assert_error(
            "SELECT audit.enable('cap_bad_v')",
            "42809",
            "is not a table (it is a view)",
        );
        assert_error(
            "SELECT audit.enable('cap_bad_tmp')",
            "0A000",
            "temporary table",
        );
        assert_error(
            "SELECT audit.enable('cap_bad', exclude_columns => ARRAY['nope'])",
            "42703",
            "'nope'",
        );
        assert_error(
            "SELECT audit.enable('cap_bad', mask_columns => ARRAY['id'])",
            "22023",
            "key columns",
        );
        assert_error("SELECT audit.enable('cap_bad', exclude_columns => ARRAY['a'], mask_columns => ARRAY['a'])", "22023", "both excluded and masked");
        assert_error(
            "SELECT audit.enable('cap_bad', key_columns => ARRAY[]::text[])",
            "22023",
            "at least one column",
        );
        assert_error(
            "SELECT audit.enable('cap_bad', entity_name => ' ')",
            "22023",
            "entity_name",
        );
        assert_error(
            "SELECT audit.enable('audit.tracked')",
            "42809",
            "cannot be audited",
        );
        assert_eq!(
            count("SELECT 1 FROM audit.tracked WHERE relid::text LIKE 'cap_bad%'"),
            0,
            "nothing half done"
        );
    }

    #[pg_test]
    fn renamed_table_keeps_tracking_and_dropped_table_leaves_it() {
        run("CREATE TABLE cap_drop (id int PRIMARY KEY)");
        run("SELECT audit.enable('cap_drop')");
        let oid = one::<i64>("SELECT 'cap_drop'::regclass::oid::int8");
        run("ALTER TABLE cap_drop RENAME TO cap_renamed");
        run("INSERT INTO cap_renamed VALUES (1)");
        assert_eq!(
            one::<String>(
                "SELECT table_name::text FROM audit.tracked_tables WHERE entity_type = 'cap_drop'"
            ),
            "cap_renamed"
        );
        assert_eq!(
            count("SELECT 1 FROM audit.history('cap_renamed', '1')"),
            1,
            "the new table name finds the record"
        );
        run("DROP TABLE cap_renamed");
        assert_eq!(
            count(&format!("SELECT 1 FROM audit.tracked WHERE relid = {oid}")),
            0
        );
    }
}
