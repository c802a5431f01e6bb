//! Revert, revert_statement, record_at and compare.

#[pgrx::pg_schema]
mod tests {
    use crate::tests::{assert_error, count, error_of, json, maybe, one, run};
    use pgrx::prelude::*;
    use serde_json::json;

    /// Reverting a real event needs a stored one (an id), which a test's
    /// transaction never has: tests/pg_regress/sql/revert.sql reverts them.
    /// What is refused before any event is read is checked here.
    #[pg_test]
    fn revert_refusals_that_need_no_stored_event() {
        run("CREATE TABLE rv_bad (id int PRIMARY KEY, v text)");
        run("SELECT audit.enable('rv_bad')");
        run("INSERT INTO rv_bad VALUES (1, 'a')");
        run("UPDATE rv_bad SET v = 'b'");
        assert_error("SELECT audit.revert(-1)", "P0002", "does not exist");
        assert_error(
            "SELECT audit.revert(9223372036854775807, 'v')",
            "P0002",
            "audit event 9223372036854775807 does not exist",
        );
        assert_error(
            "SELECT count(*) FROM audit.revert_statement(-5)",
            "P0002",
            "no events belong to statement -5",
        );
        // A pending event has no id yet: nothing names it.
        assert_eq!(
            count("SELECT 1 FROM audit.events WHERE entity_type = 'rv_bad' AND id IS NULL"),
            2
        );
        // Not a member of audit_admin: no EXECUTE, or refused when granted it anyway.
        run("CREATE ROLE rv_clerk");
        run("GRANT ALL ON rv_bad TO rv_clerk");
        run("SET LOCAL ROLE rv_clerk");
        assert!(error_of("SELECT audit.revert(1)")
            .starts_with("42501: permission denied for function revert"));
        assert!(error_of("SELECT count(*) FROM audit.revert_statement(1)")
            .starts_with("42501: permission denied for function revert_statement"));
        run("RESET ROLE");
        run("CREATE ROLE rv_granted");
        run("GRANT EXECUTE ON FUNCTION audit.revert(bigint, text, boolean) TO rv_granted");
        run("SET LOCAL ROLE rv_granted");
        assert_error(
            "SELECT audit.revert(-1)",
            "42501",
            "permission denied to revert audit events",
        );
        run("RESET ROLE");
        assert_eq!(
            one::<String>("SELECT v FROM rv_bad"),
            "b",
            "nothing changed"
        );
        assert_eq!(
            count("SELECT 1 FROM audit.events WHERE action = 'REVERT'"),
            0
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

    /// Which table a revert writes to: the one tracked table of the event's
    /// entity type. (audit.revert reaches this only with a stored event, so
    /// the lookup it uses is called directly.)
    #[pg_test]
    fn revert_needs_exactly_one_tracked_table_for_the_entity() {
        run("CREATE TABLE rv_gone (id int PRIMARY KEY, v text)");
        run("SELECT audit.enable('rv_gone', entity_name => 'Shared')");
        assert_eq!(
            one::<String>("SELECT (audit._tracked_for('Shared')).relid::text"),
            "rv_gone"
        );
        run("CREATE TABLE rv_twin (id int PRIMARY KEY, v text)");
        run("SELECT audit.enable('rv_twin', entity_name => 'Shared')");
        assert_error(
            "SELECT audit._tracked_for('Shared')",
            "55000",
            "entity type Shared is recorded by 2 tables",
        );
        run("SELECT audit.disable('rv_twin')");
        run("SELECT audit.disable('rv_gone')");
        assert_error(
            "SELECT audit._tracked_for('Shared')",
            "55000",
            "no tracked table records entity type Shared",
        );
        assert_error(
            "SELECT audit._tracked_for('shared')",
            "55000",
            "no tracked table records entity type shared",
        );
    }
}
