//! Revert, revert_statement, record_at and compare.

#[pgrx::pg_schema]
mod tests {
    use crate::tests::{assert_error, count, error_of, json, maybe, one, run};
    use pgrx::prelude::*;
    use serde_json::json;

    fn deal_table(name: &str) {
        run(&format!(
            "CREATE TABLE {name} (id text PRIMARY KEY, stage text, amount numeric(12,2), tags text[], extra jsonb,
                 closes timestamptz, ssn text, rep text)"
        ));
        run(&format!("INSERT INTO {name} VALUES ('d1', 'Qualification', 1000, '{{a,b}}', '{{\"k\": 1}}', '2026-12-31 10:00+00', '111', 'ann')"));
        run(&format!(
            "SELECT audit.enable('{name}', mask_columns => ARRAY['ssn'])"
        ));
    }

    fn last_event(entity: &str) -> i64 {
        one::<i64>(&format!(
            "SELECT max(id) FROM audit.events WHERE entity_type = '{entity}'"
        ))
    }

    #[pg_test]
    fn revert_one_field_is_itself_audited() {
        deal_table("rv_one");
        run("SELECT audit.set_context(actor => 'ann', source => 'UI')");
        run("UPDATE rv_one SET stage = 'Proposal', amount = 2000 WHERE id = 'd1'");
        let update = last_event("rv_one");
        run("SELECT audit.set_context(actor => 'admin.ada', source => 'UI', metadata => '{\"ticket\": \"T-7\"}')");
        let revert = one::<i64>(&format!("SELECT audit.revert({update}, 'stage')"));
        assert_eq!(
            one::<String>("SELECT stage || ' ' || amount FROM rv_one"),
            "Qualification 2000.00"
        );
        let event = json(&format!(
            "SELECT jsonb_build_object('action', action, 'actor', actor, 'changes', changes, 'meta', metadata) FROM audit.events WHERE id = {revert}"
        ));
        assert_eq!(
            event,
            json!({"action": "REVERT", "actor": "admin.ada",
                   "changes": {"stage": {"old": "Proposal", "new": "Qualification"}},
                   "meta": {"reverted_event_id": update, "operation": "UPDATE", "ticket": "T-7"}})
        );
        // The revert context does not leak into later changes.
        run("UPDATE rv_one SET rep = 'bob'");
        assert_eq!(
            one::<String>(&format!(
                "SELECT action FROM audit.events WHERE id = {}",
                last_event("rv_one")
            )),
            "UPDATE"
        );
    }

    #[pg_test]
    fn revert_whole_update_across_types() {
        deal_table("rv_types");
        run("UPDATE rv_types SET amount = NULL, tags = '{c}', extra = '{\"k\": [1, 2.50]}', closes = '2027-01-15 08:30:00.5+00'");
        let update = last_event("rv_types");
        run(&format!("SELECT audit.revert({update})"));
        assert_eq!(
            one::<String>("SELECT concat_ws('|', amount, tags, extra, closes AT TIME ZONE 'UTC') FROM rv_types"),
            "1000.00|{a,b}|{\"k\": 1}|2026-12-31 10:00:00"
        );
        // Reverting the revert restores the change.
        let revert = last_event("rv_types");
        run(&format!("SELECT audit.revert({revert})"));
        assert_eq!(
            one::<String>("SELECT extra::text FROM rv_types"),
            "{\"k\": [1, 2.50]}"
        );
        assert_eq!(maybe::<String>("SELECT amount::text FROM rv_types"), None);
    }

    #[pg_test]
    fn revert_refuses_when_the_value_changed_since_unless_forced() {
        deal_table("rv_since");
        run("UPDATE rv_since SET stage = 'Proposal'");
        let first = last_event("rv_since");
        run("UPDATE rv_since SET stage = 'Negotiation'");
        let second = last_event("rv_since");
        let error = error_of(&format!("SELECT audit.revert({first}, 'stage')"));
        assert!(
            error.starts_with("55000: field stage of rv_since d1 was changed again since event"),
            "{error}"
        );
        assert!(error.contains("force => true"), "{error}");
        run(&format!("SELECT audit.revert({second})"));
        run(&format!("SELECT audit.revert({first})"));
        assert_eq!(one::<String>("SELECT stage FROM rv_since"), "Qualification");
        run("UPDATE rv_since SET stage = 'Won'");
        let won = last_event("rv_since");
        run("UPDATE rv_since SET stage = 'Lost'");
        run(&format!("SELECT audit.revert({won}, force => true)"));
        assert_eq!(one::<String>("SELECT stage FROM rv_since"), "Qualification");
    }

    #[pg_test]
    fn revert_delete_reinserts_and_insert_deletes() {
        run("CREATE TABLE rv_rows (org text, num int, name text, note text, PRIMARY KEY (org, num))");
        run("SELECT audit.enable('rv_rows')");
        run("INSERT INTO rv_rows VALUES ('acme', 1, 'Ann', NULL)");
        let insert = last_event("rv_rows");
        run("DELETE FROM rv_rows");
        let delete = last_event("rv_rows");
        run(&format!("SELECT audit.revert({delete})"));
        assert_eq!(
            one::<String>(
                "SELECT concat_ws('|', org, num, name, coalesce(note, 'null')) FROM rv_rows"
            ),
            "acme|1|Ann|null"
        );
        assert_eq!(
            json(&format!(
                "SELECT metadata->'operation' FROM audit.events WHERE id = {}",
                last_event("rv_rows")
            )),
            json!("INSERT")
        );
        assert_error(
            &format!("SELECT audit.revert({delete})"),
            "23505",
            "exists again",
        );
        // The INSERT was followed by other events: refused unless forced.
        assert_error(
            &format!("SELECT audit.revert({insert})"),
            "55000",
            "changed since it was inserted",
        );
        run(&format!("SELECT audit.revert({insert}, force => true)"));
        assert_eq!(count("SELECT 1 FROM rv_rows"), 0);
        assert_error(
            &format!("SELECT audit.revert({insert}, force => true)"),
            "55000",
            "no longer exists",
        );
    }

    #[pg_test]
    fn revert_refusals() {
        deal_table("rv_bad");
        run("UPDATE rv_bad SET ssn = '222', rep = 'bob'");
        let update = last_event("rv_bad");
        assert_error(
            &format!("SELECT audit.revert({update}, 'ssn')"),
            "0A000",
            "masked",
        );
        assert_error(
            &format!("SELECT audit.revert({update}, 'stage')"),
            "22023",
            "did not change field stage",
        );
        run("ALTER TABLE rv_bad DROP COLUMN rep");
        assert_error(
            &format!("SELECT audit.revert({update}, 'rep')"),
            "42703",
            "no longer exists",
        );
        assert_error("SELECT audit.revert(-1)", "P0002", "does not exist");
        let login = one::<i64>("SELECT audit.log_event('LOGIN')");
        assert_error(
            &format!("SELECT audit.revert({login})"),
            "42809",
            "not a record change",
        );
        let config = one::<i64>("SELECT min(id) FROM audit.events WHERE entity_id = 'public.rv_bad' AND action = 'CONFIG_CHANGE'");
        assert_error(
            &format!("SELECT audit.revert({config})"),
            "42809",
            "not a record change",
        );
        run("CREATE ROLE rv_clerk");
        run("SET LOCAL ROLE rv_clerk");
        assert!(error_of(&format!("SELECT audit.revert({update})"))
            .starts_with("42501: permission denied for function revert"));
        run("RESET ROLE");
        assert_eq!(
            one::<String>("SELECT ssn FROM rv_bad"),
            "222",
            "nothing half done"
        );
    }

    #[pg_test]
    fn revert_statement_is_all_or_nothing() {
        run("CREATE TABLE rv_bulk (id int PRIMARY KEY, stage text)");
        run("INSERT INTO rv_bulk SELECT g, 'Lead' FROM generate_series(1, 5) g");
        run("SELECT audit.enable('rv_bulk')");
        run("UPDATE rv_bulk SET stage = 'Qualified'");
        let statement =
            one::<i64>("SELECT max(statement_id) FROM audit.events WHERE entity_type = 'rv_bulk'");
        run("UPDATE rv_bulk SET stage = 'Won' WHERE id = 3");
        assert_error(
            &format!("SELECT count(*) FROM audit.revert_statement({statement})"),
            "55000",
            "changed again",
        );
        assert_eq!(
            count("SELECT 1 FROM rv_bulk WHERE stage = 'Qualified'"),
            4,
            "nothing reverted"
        );
        run("UPDATE rv_bulk SET stage = 'Qualified' WHERE id = 3");
        assert_eq!(
            count(&format!(
                "SELECT * FROM audit.revert_statement({statement})"
            )),
            5
        );
        assert_eq!(count("SELECT 1 FROM rv_bulk WHERE stage = 'Lead'"), 5);
        assert_eq!(
            count("SELECT 1 FROM audit.events WHERE action = 'REVERT' AND entity_type = 'rv_bulk'"),
            5
        );
        assert_error(
            "SELECT count(*) FROM audit.revert_statement(-5)",
            "P0002",
            "no events",
        );
    }

    // A #[pg_test] is one statement, so every event in it shares one
    // occurred_at; the step-by-step timeline is in tests/pg_regress/sql/revert.sql.
    #[pg_test]
    fn record_at_and_compare_rebuild_the_record() {
        run("CREATE TABLE rv_hist (id int PRIMARY KEY, stage text, amount int, ssn text)");
        run("SELECT audit.enable('rv_hist', mask_columns => ARRAY['ssn'])");
        run("INSERT INTO rv_hist VALUES (1, 'Lead', 100, 'x')");
        run("UPDATE rv_hist SET stage = 'Won', amount = NULL");
        assert_eq!(
            json("SELECT audit.record_at('rv_hist', '1', now() + interval '1 day')"),
            json!({"id": "1", "stage": "Won", "amount": null, "ssn": {"masked": true}})
        );
        assert_eq!(
            maybe::<String>("SELECT audit.record_at('rv_hist', '1', '2000-01-01')::text"),
            None
        );
        // Absent then (the record did not exist) differs from a JSON null now.
        let diff = json(
            "SELECT jsonb_agg(jsonb_build_array(field, value_at_t1, value_at_t2, changed) ORDER BY field)
               FROM audit.compare('rv_hist', '1', '2000-01-01', now() + interval '1 day')",
        );
        assert_eq!(
            diff,
            json!([["amount", null, null, true], ["id", null, "1", true], ["ssn", null, {"masked": true}, true],
                   ["stage", null, "Won", true]])
        );
        run("DELETE FROM rv_hist");
        assert_eq!(
            maybe::<String>(
                "SELECT audit.record_at('rv_hist', '1', now() + interval '1 day')::text"
            ),
            None
        );
    }

    #[pg_test]
    fn revert_needs_exactly_one_tracked_table_for_the_entity() {
        run("CREATE TABLE rv_gone (id int PRIMARY KEY, v text)");
        run("SELECT audit.enable('rv_gone', entity_name => 'Shared')");
        run("INSERT INTO rv_gone VALUES (1, 'a')");
        run("UPDATE rv_gone SET v = 'b'");
        let update = one::<i64>("SELECT max(id) FROM audit.events WHERE entity_type = 'Shared'");
        run("CREATE TABLE rv_twin (id int PRIMARY KEY, v text)");
        run("SELECT audit.enable('rv_twin', entity_name => 'Shared')");
        assert_error(
            &format!("SELECT audit.revert({update})"),
            "55000",
            "recorded by 2 tables",
        );
        run("SELECT audit.disable('rv_twin')");
        run("SELECT audit.disable('rv_gone')");
        assert_error(
            &format!("SELECT audit.revert({update})"),
            "55000",
            "no tracked table records entity type Shared",
        );
        assert_eq!(
            one::<String>("SELECT v FROM rv_gone"),
            "b",
            "nothing changed"
        );
    }
}
