//! Storage: append-only guards, privileges, partitions, reading functions,
//! and what the session sees of its events before they are stored.

#[pgrx::pg_schema]
mod tests {
    use crate::tests::{assert_error, count, error_of, json, one, run};
    use pgrx::prelude::*;
    use serde_json::json;

    /// A stored chunk row, as the materializer inserts it (as the extension
    /// owner): a test's own events are never stored, its transaction rolls back.
    fn store_a_chunk() {
        run("SELECT audit.ensure_partitions()");
        run("INSERT INTO audit.event_chunks (id, block_id, occurred_at, txid, event_count, action, entity_ids, changes)
             VALUES (1, 1, now(), pg_current_xact_id(), 2, 'LOGIN', '{stor_a,stor_b}', ARRAY[NULL, NULL]::jsonb[])");
    }

    #[pg_test]
    fn event_chunks_cannot_be_changed_even_by_their_owner() {
        store_a_chunk();
        assert_eq!(
            one::<String>("SELECT string_agg(id || ':' || entity_id, ',' ORDER BY id) FROM audit.events WHERE entity_id LIKE 'stor\\_%'"),
            "1:stor_a,2:stor_b"
        );
        assert_error(
            "UPDATE audit.event_chunks SET actor = 'x'",
            "42501",
            "append-only: UPDATE",
        );
        assert_error(
            "DELETE FROM audit.event_chunks WHERE id = 1",
            "42501",
            "append-only: DELETE",
        );
        assert_error(
            "TRUNCATE audit.event_chunks",
            "42501",
            "append-only: TRUNCATE",
        );
        let partition =
            one::<String>("SELECT tableoid::regclass::text FROM audit.event_chunks WHERE id = 1");
        assert_eq!(
            partition,
            one::<String>(
                "SELECT 'audit.event_chunks_' || to_char(now() AT TIME ZONE 'UTC', 'YYYYMM')"
            )
        );
        assert_error(&format!("TRUNCATE {partition}"), "42501", "append-only");
        assert_error(&format!("DELETE FROM {partition}"), "42501", "append-only");
        assert_error(
            &format!("UPDATE {partition} SET event_count = 1"),
            "42501",
            "append-only",
        );
        // The views are not a way around it.
        assert_error(
            "UPDATE audit.events SET actor = 'x'",
            "55000",
            "cannot update view",
        );
        assert_error(
            "DELETE FROM audit.chunks",
            "55000",
            "cannot delete from view",
        );
        assert_eq!(
            count("SELECT 1 FROM audit.events WHERE entity_id LIKE 'stor\\_%' AND block_id = 1"),
            2
        );
        // Retention deletes with audit.maintenance on (superuser only); it still changes nothing.
        run("SET LOCAL audit.maintenance = 'on'");
        assert_error(
            "UPDATE audit.event_chunks SET actor = 'x'",
            "42501",
            "append-only",
        );
        run("DELETE FROM audit.event_chunks WHERE id = 1");
        assert_eq!(
            count("SELECT 1 FROM audit.events WHERE entity_id LIKE 'stor\\_%'"),
            0
        );
    }

    #[pg_test]
    fn application_roles_write_only_through_capture_and_log_event() {
        run("CREATE ROLE stor_app");
        run("CREATE TABLE stor_deal (id int PRIMARY KEY, stage text)");
        run("GRANT ALL ON stor_deal TO stor_app");
        run("SELECT audit.enable('stor_deal')");
        run("SET LOCAL ROLE stor_app");
        run("INSERT INTO stor_deal VALUES (1, 'Lead')");
        run("UPDATE stor_deal SET stage = 'Won'");
        run("SELECT audit.log_event('LOGIN')");
        for denied in [
            "SELECT count(*) FROM audit.events",
            "SELECT count(*) FROM audit.chunks",
            "SELECT count(*) FROM audit.event_chunks",
            "SELECT count(*) FROM audit._own_pending_chunks()",
            "INSERT INTO audit.event_chunks (id, block_id, occurred_at, txid, event_count, action, entity_ids, changes)
             VALUES (1, 1, now(), '1', 1, 'LOGIN', '{NULL}', '{NULL}')",
            "SELECT * FROM audit.history('stor_deal', '1')",
            "SELECT count(*) FROM audit.search('user:stor_app')",
        ] {
            assert_permission_denied(denied);
        }
        assert_error(
            "SELECT audit.enable('stor_deal')",
            "42501",
            "permission denied to audit",
        );
        run("RESET ROLE");
        assert_eq!(
            count(
                "SELECT 1 FROM audit.events WHERE (entity_type = 'stor_deal' OR action = 'LOGIN') AND actor = 'stor_app'"
            ),
            3
        );
        run("CREATE ROLE stor_analyst IN ROLE audit_reader");
        run("SET LOCAL ROLE stor_analyst");
        // A reader sees the session's pending events through the views.
        assert_eq!(
            count("SELECT 1 FROM audit.field_changes WHERE entity_type = 'stor_deal'"),
            3
        );
        assert_eq!(count("SELECT 1 FROM audit.history('stor_deal', '1')"), 3);
        assert_eq!(
            count("SELECT 1 FROM audit.chunks WHERE entity_type = 'stor_deal'"),
            2
        );
        for denied in [
            "INSERT INTO audit.event_chunks (id, block_id, occurred_at, txid, event_count, action, entity_ids, changes)
             VALUES (1, 1, now(), '1', 1, 'LOGIN', '{NULL}', '{NULL}')",
            "SELECT audit.enable('stor_deal')",
            "SELECT audit.seal()",
        ] {
            assert_permission_denied(denied);
        }
        run("RESET ROLE");
    }

    #[pg_test]
    fn partitions_are_created_ahead_by_month() {
        // audit.enable() (and the worker, hourly) makes this month's and the next three.
        run("CREATE TABLE stor_part (id int PRIMARY KEY)");
        run("SELECT audit.enable('stor_part')");
        for ahead in 0..=3 {
            let name = one::<String>(&format!(
                "SELECT 'event_chunks_' || to_char((now() AT TIME ZONE 'UTC') + interval '{ahead} months', 'YYYYMM')"
            ));
            assert_eq!(
                count(&format!("SELECT 1 FROM pg_class WHERE relname = '{name}' AND relnamespace = 'audit'::regnamespace")),
                1,
                "{name}"
            );
        }
        run("SELECT audit.ensure_partitions('2031-02-10 12:00+00')");
        for month in ["203102", "203103", "203104", "203105"] {
            assert_eq!(
                count(&format!(
                    "SELECT 1 FROM pg_class WHERE relname = 'event_chunks_{month}' AND relnamespace = 'audit'::regnamespace"
                )),
                1,
                "{month}"
            );
        }
        assert_eq!(
            count("SELECT 1 FROM pg_class WHERE relname = 'event_chunks_203106'"),
            0
        );
        assert_eq!(
            one::<String>("SELECT pg_get_expr(relpartbound, oid) FROM pg_class WHERE relname = 'event_chunks_203102'"),
            "FOR VALUES FROM ('2031-02-01 00:00:00+00') TO ('2031-03-01 00:00:00+00')"
        );
        // Each with the indexes of audit._index_partition and the guards.
        assert_eq!(
            json("SELECT jsonb_agg(replace(c.relname, 'event_chunks_203102_', '') ORDER BY c.relname)
                    FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
                   WHERE i.indrelid = 'audit.event_chunks_203102'::regclass"),
            json!(["action_idx", "actor_idx", "block_brin", "entity_idx", "id_idx", "occurred_at_brin", "statement_idx"])
        );
        // Every variable-length column stays in the row, compressed when the
        // row is large (sql/schema.sql), in the trail's partitions and the
        // archive's alike.
        run("SELECT audit._ensure_archive_partition('2031-02-01')");
        for partition in [
            "audit.event_chunks_203102",
            "audit_archive.event_chunks_203102",
        ] {
            assert_eq!(
                json(&format!(
                    "SELECT jsonb_agg(DISTINCT attstorage::text || attcompression::text) FROM pg_attribute
                      WHERE attrelid = '{partition}'::regclass AND attnum > 0 AND attlen = -1"
                )),
                json!(["ml"]),
                "{partition}"
            );
        }
        assert_eq!(
            json("SELECT jsonb_agg(tgname::text ORDER BY tgname) FROM pg_trigger WHERE tgrelid = 'audit.event_chunks_203102'::regclass"),
            json!(["event_chunks_append_only", "event_chunks_append_only_truncate"])
        );
        assert_error(
            "SELECT audit.ensure_partitions(now(), 500)",
            "22023",
            "months_ahead",
        );
    }

    /// Stored chunks of several events, in the trail and in the archive, found
    /// through runs of the entity index, before and after merging them.
    #[pg_test]
    fn several_event_chunks_are_found_through_entity_runs() {
        use audit_core::entity_key::key_hash;
        use audit_core::entity_runs::{sort_run, FANOUT};
        run("SELECT audit.ensure_partitions()");
        run("SELECT audit._ensure_archive_partition(date_trunc('month', now())::timestamp)");
        for (table, id, ids) in [
            ("audit.event_chunks", 1_000, "{run_a,run_b,run_c}"),
            ("audit.event_chunks", 2_000, "{run_b,run_d}"),
            ("audit_archive.event_chunks", 500, "{run_b,run_e}"),
        ] {
            run(&format!(
                "INSERT INTO {table} (id, block_id, occurred_at, txid, event_count, action, entity_type, entity_ids, changes)
                 VALUES ({id}, 1, now(), pg_current_xact_id(), cardinality('{ids}'::text[]), 'UPDATE', 'run_entity',
                         '{ids}', array_fill(NULL::jsonb, ARRAY[cardinality('{ids}'::text[])]))"
            ));
        }
        // The runs the materializer would write: FANOUT + 1 at level 0, the
        // first naming only chunk 100, older than any chunk left.
        let pairs = |chunk: i64, ids: &[&str]| -> Vec<(i32, i64)> {
            ids.iter().map(|id| (key_hash(id), chunk)).collect()
        };
        let mut runs = vec![
            pairs(100, &["run_b"]),
            pairs(500, &["run_b", "run_e"]),
            pairs(1_000, &["run_a", "run_b", "run_c"]),
            pairs(2_000, &["run_b", "run_d"]),
        ];
        runs.extend((0..FANOUT as i64 - 4).map(|n| pairs(3_000 + n, &["run_z"])));
        runs.push(pairs(9_000, &["run_b"]));
        Spi::connect_mut(|client| {
            for run in runs {
                let run = sort_run(run);
                crate::entity_index::insert_run(client, run[0].1, 0, &run)?;
            }
            Ok::<_, pgrx::spi::Error>(())
        })
        .unwrap();
        // (The archive's chunk is listed too; reading the trail leaves it out.)
        let history_of_b =
            "SELECT jsonb_agg(id ORDER BY id) FROM audit._record_events(ARRAY['run_entity'], 'run_b')";
        let found = json!([1_001, 2_000]);
        assert_eq!(
            json("SELECT to_jsonb(audit._entity_chunks('run_b'))"),
            json!([100, 500, 1_000, 2_000, 9_000])
        );
        assert_eq!(json(history_of_b), found);
        assert_eq!(
            json("SELECT to_jsonb(audit._entity_chunks('run_e'))"),
            json!([500])
        );
        assert_eq!(
            json("SELECT to_jsonb(audit._entity_chunks('no_such'))"),
            json!([])
        );
        // Readers look up through the runs; merging is the worker's (and a superuser's).
        run("SET LOCAL ROLE audit_reader");
        assert_eq!(
            json("SELECT to_jsonb(audit._entity_chunks('run_e'))"),
            json!([500])
        );
        assert_eq!(json(history_of_b), found);
        assert_permission_denied("SELECT audit._merge_entity_runs()");
        run("RESET ROLE");
        // The run of chunk 100 (older than any chunk left) is dropped; then
        // the eight runs left at level 0 are merged into one.
        assert_eq!(one::<i64>("SELECT audit._merge_entity_runs()"), 2);
        assert_eq!(
            json("SELECT jsonb_agg(jsonb_build_array(level, run_id, pairs) ORDER BY level, run_id) FROM audit.entity_runs"),
            json!([[1, 500, 12]])
        );
        assert_eq!(one::<i64>("SELECT audit._merge_entity_runs()"), 0);
        assert_eq!(
            json("SELECT to_jsonb(audit._entity_chunks('run_b'))"),
            json!([500, 1_000, 2_000, 9_000])
        );
        assert_eq!(json(history_of_b), found);
        assert_eq!(count("SELECT 1 FROM audit.search('id:run_d', 10)"), 1);
        assert_eq!(
            count("SELECT 1 FROM audit.search('id:run_b', 10, include_archived => true)"),
            3
        );
    }

    /// A chunk of several events not stored yet (no chunk id) is found by record.
    #[pg_test]
    fn a_pending_bulk_statement_is_found_by_record() {
        run("CREATE TABLE run_pending (id text PRIMARY KEY, stage text)");
        run("SELECT audit.enable('run_pending')");
        run("INSERT INTO run_pending SELECT 'p' || g, 'New' FROM generate_series(1, 3) g");
        run("UPDATE run_pending SET stage = 'Won'");
        assert_eq!(
            count("SELECT 1 FROM audit._record_events(ARRAY['run_pending'], 'p2')"),
            2
        );
        assert_eq!(
            count("SELECT 1 FROM audit.search('entity:run_pending id:p3', 10)"),
            2
        );
    }

    #[pg_test]
    fn a_row_of_a_hundred_events_is_kept_compressed_in_its_page() {
        // In a month of its own: its partition's TOAST table is this test's alone.
        run("SELECT audit.ensure_partitions('2032-07-10 12:00+00', 0)");
        // Packed single-row updates: each event with its own time, transaction and statement.
        run("INSERT INTO audit.event_chunks (id, block_id, occurred_at, txid, event_count, occurred_ats, txids,
                                             statement_ids, action, metadata, entity_ids, changes)
             SELECT 1, 1, '2032-07-10 12:00+00', pg_current_xact_id(), 100,
                    array_agg('2032-07-10 12:00+00'::timestamptz + g * interval '1.5 s' ORDER BY g),
                    array_agg((1000 + 7 * g)::text::xid8 ORDER BY g), array_agg(1000 + 3 * g ORDER BY g),
                    'UPDATE', jsonb_build_object('request_id', 'r_42', 'note', 'set by the application'),
                    array_agg('stor_' || g ORDER BY g),
                    array_agg(jsonb_build_object('probability', jsonb_build_object('old', g::text, 'new', (g + 1)::text)) ORDER BY g)
               FROM generate_series(1, 100) g");
        assert_eq!(
            json("SELECT jsonb_build_array(pg_column_compression(changes), pg_column_compression(entity_ids))
                    FROM audit.event_chunks WHERE id = 1"),
            json!(["lz4", "lz4"])
        );
        let (stored, plain) = (
            one::<i32>("SELECT pg_column_size(changes) FROM audit.event_chunks WHERE id = 1"),
            one::<i32>("SELECT pg_column_size(changes::text::jsonb[]) FROM audit.event_chunks WHERE id = 1"),
        );
        assert!(stored * 3 < plain, "{stored} bytes stored for {plain}");
        assert_eq!(
            one::<i64>("SELECT pg_relation_size(reltoastrelid) FROM pg_class WHERE oid = 'audit.event_chunks_203207'::regclass"),
            0,
            "nothing went to TOAST"
        );
    }

    #[pg_test]
    fn field_changes_history_and_user_activity() {
        run("CREATE TABLE stor_opp (id text PRIMARY KEY, stage text, amount numeric)");
        run("SELECT audit.enable('stor_opp', entity_name => 'Opportunity')");
        run("SELECT audit.set_context(actor => 'ann', source => 'UI')");
        run("INSERT INTO stor_opp VALUES ('opp_1', 'Qualification', 1000)");
        run("SELECT audit.set_context(actor => 'bob', source => 'API')");
        run("UPDATE stor_opp SET stage = 'Proposal', amount = 1500");
        run("SELECT audit.set_context(actor => 'ann', source => 'AUTOMATION')");
        run("UPDATE stor_opp SET stage = 'Closed Won'");
        // (Pending events have no id: ordered by value, not by time.)
        let stage = json(
            "SELECT jsonb_agg(jsonb_build_array(action, old_value, new_value, actor, source, event_id) ORDER BY new_value)
               FROM audit.history('opportunity', 'opp_1', 'stage')",
        );
        assert_eq!(
            stage,
            json!([
                [
                    "UPDATE",
                    "Proposal",
                    "Closed Won",
                    "ann",
                    "AUTOMATION",
                    null
                ],
                ["UPDATE", "Qualification", "Proposal", "bob", "API", null],
                ["INSERT", null, "Qualification", "ann", "UI", null]
            ])
        );
        assert_eq!(
            count("SELECT 1 FROM audit.history('stor_opp', 'opp_1')"),
            6,
            "table name works as entity"
        );
        assert_eq!(count("SELECT 1 FROM audit.history('Opportunity', 'opp_1', since => now() + interval '1 day')"), 0);
        assert_eq!(
            count("SELECT 1 FROM audit.history('Opportunity', 'opp_2')"),
            0
        );
        assert_eq!(count("SELECT 1 FROM audit.field_changes WHERE entity_type = 'Opportunity' AND field = 'amount'"), 2);
        assert_eq!(
            json("SELECT jsonb_agg(DISTINCT jsonb_build_array(event_id, statement_id)) FROM audit.field_changes WHERE entity_type = 'Opportunity'"),
            json!([[null, null]])
        );
        assert_eq!(
            count("SELECT 1 FROM audit.user_activity('ann') WHERE entity_type = 'Opportunity'"),
            2
        );
        assert_eq!(count("SELECT 1 FROM audit.user_activity('ann', action => 'update') WHERE entity_type = 'Opportunity'"), 1);
        assert_eq!(
            count("SELECT 1 FROM audit.user_activity('bob', until => now() - interval '1 day')"),
            0
        );
    }

    /// Until the worker stores them after commit, the session's events are
    /// pending rows: everything the writer knew, nothing the materializer adds.
    #[pg_test]
    fn pending_events_have_no_id_statement_hash_or_block() {
        run("CREATE TABLE stor_pend (id int PRIMARY KEY, v text)");
        run("SELECT audit.enable('stor_pend')");
        run("INSERT INTO stor_pend SELECT g, 'a' FROM generate_series(1, 3) g");
        run("UPDATE stor_pend SET v = 'b' WHERE id = 1");
        run("SELECT audit.log_event('LOGIN', 'stor_pend', 'login')");
        let rows = json(
            "SELECT jsonb_agg(jsonb_build_object('action', action, 'entity', entity_id, 'id', id, 'statement', statement_id,
                     'hash', hash, 'block', block_id, 'now', txid = pg_current_xact_id() AND occurred_at = statement_timestamp(),
                     'meta', metadata) ORDER BY action, entity_id)
               FROM audit.events WHERE entity_type = 'stor_pend'",
        );
        let row = |action: &str, entity: &str, meta: serde_json::Value| {
            json!({"action": action, "entity": entity, "id": null, "statement": null, "hash": null, "block": null,
                   "now": true, "meta": meta})
        };
        assert_eq!(
            rows,
            json!([
                row("INSERT", "1", json!({"row_count": 3})),
                row("INSERT", "2", json!({"row_count": 3})),
                row("INSERT", "3", json!({"row_count": 3})),
                row("LOGIN", "login", json!(null)),
                row("UPDATE", "1", json!(null))
            ])
        );
        // One pending chunk row per statement, in audit.chunks, none in the table.
        assert_eq!(
            json("SELECT jsonb_agg(jsonb_build_array(action, event_count, entity_ids) ORDER BY action)
                    FROM audit.chunks WHERE entity_type = 'stor_pend' AND id IS NULL AND block_id IS NULL AND statement_id IS NULL"),
            json!([["INSERT", 3, ["1", "2", "3"]], ["LOGIN", 1, ["login"]], ["UPDATE", 1, ["1"]]])
        );
        assert_eq!(
            count("SELECT 1 FROM audit.event_chunks WHERE entity_type = 'stor_pend'"),
            0
        );
        // The lookups by id find none of them.
        assert_eq!(
            count("SELECT 1 FROM audit.events WHERE entity_type = 'stor_pend' AND id IS NOT NULL"),
            0
        );
        assert_eq!(
            count("SELECT 1 FROM audit._event_rows WHERE entity_type = 'stor_pend' AND chunk_id IS NULL"),
            5
        );
        assert_eq!(
            count("SELECT 1 FROM audit._record_events(ARRAY['stor_pend'], '1')"),
            2
        );
    }

    fn assert_permission_denied(sql: &str) {
        let error = error_of(sql);
        assert!(
            error.starts_with("42501: permission denied"),
            "{sql}: {error}"
        );
    }
}
