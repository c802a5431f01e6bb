//! Storage: append-only guards, privileges, partitions, reading functions.

#[pgrx::pg_schema]
mod tests {
    use crate::tests::{assert_error, count, error_of, json, one, run};
    use pgrx::prelude::*;
    use serde_json::json;

    #[pg_test]
    fn events_cannot_be_changed_even_by_their_owner() {
        let id = one::<i64>("SELECT audit.log_event('LOGIN')");
        assert_error(
            &format!("UPDATE audit.events SET actor = 'x' WHERE id = {id}"),
            "42501",
            "append-only",
        );
        assert_error(
            &format!("DELETE FROM audit.events WHERE id = {id}"),
            "42501",
            "append-only",
        );
        assert_error("TRUNCATE audit.events", "42501", "append-only");
        let partition = one::<String>("SELECT inhrelid::regclass::text FROM pg_inherits WHERE inhparent = 'audit.events'::regclass LIMIT 1");
        assert_error(&format!("TRUNCATE {partition}"), "42501", "append-only");
        assert_error(&format!("DELETE FROM {partition}"), "42501", "append-only");
        assert_eq!(
            count(&format!("SELECT 1 FROM audit.events WHERE id = {id}")),
            1
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
        one::<i64>("SELECT audit.log_event('LOGIN')");
        for denied in [
            "SELECT count(*) FROM audit.events",
            "INSERT INTO audit.events (id, occurred_at, txid, action, hash) VALUES (1, now(), '1', 'LOGIN', '\\x00')",
            "SELECT * FROM audit.history('stor_deal', '1')",
            "SELECT nextval('audit.events_id_seq')",
        ] {
            assert!(error_of(denied).starts_with("42501: permission denied"), "{denied}");
        }
        assert_error(
            "SELECT audit.enable('stor_deal')",
            "42501",
            "permission denied to audit",
        );
        run("RESET ROLE");
        assert_eq!(
            count(
                "SELECT 1 FROM audit.events WHERE entity_type = 'stor_deal' AND actor = 'stor_app'"
            ),
            2
        );
        run("CREATE ROLE stor_analyst IN ROLE audit_reader");
        run("SET LOCAL ROLE stor_analyst");
        assert_eq!(
            count("SELECT 1 FROM audit.field_changes WHERE entity_type = 'stor_deal'"),
            3
        );
        assert_eq!(count("SELECT 1 FROM audit.history('stor_deal', '1')"), 3);
        assert!(
            error_of("UPDATE audit.events SET actor = 'x'").starts_with("42501: permission denied")
        );
        run("RESET ROLE");
    }

    #[pg_test]
    fn partitions_are_created_ahead_by_month() {
        run("SELECT audit.ensure_partitions('2031-02-10 12:00+00')");
        for month in ["203102", "203103", "203104", "203105"] {
            assert_eq!(
                count(&format!(
                    "SELECT 1 FROM pg_class WHERE relname = 'events_{month}'"
                )),
                1,
                "{month}"
            );
        }
        assert_eq!(
            one::<String>("SELECT pg_get_expr(relpartbound, oid) FROM pg_class WHERE relname = 'events_203102'"),
            "FOR VALUES FROM ('2031-02-01 00:00:00+00') TO ('2031-03-01 00:00:00+00')"
        );
        let now_month =
            one::<String>("SELECT 'events_' || to_char(now() AT TIME ZONE 'UTC', 'YYYYMM')");
        let next_month = one::<String>("SELECT 'events_' || to_char((now() AT TIME ZONE 'UTC') + interval '1 month', 'YYYYMM')");
        one::<i64>("SELECT audit.log_event('LOGIN')");
        for p in [now_month, next_month] {
            assert_eq!(
                count(&format!("SELECT 1 FROM pg_class WHERE relname = '{p}'")),
                1,
                "{p}"
            );
        }
        assert_error(
            "SELECT audit.ensure_partitions(now(), 500)",
            "22023",
            "months_ahead",
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
        let stage = json(
            "SELECT jsonb_agg(jsonb_build_array(action, old_value, new_value, actor, source) ORDER BY event_id)
               FROM audit.history('opportunity', 'opp_1', 'stage')",
        );
        assert_eq!(
            stage,
            json!([
                ["INSERT", null, "Qualification", "ann", "UI"],
                ["UPDATE", "Qualification", "Proposal", "bob", "API"],
                ["UPDATE", "Proposal", "Closed Won", "ann", "AUTOMATION"]
            ])
        );
        assert_eq!(
            count("SELECT 1 FROM audit.history('stor_opp', 'opp_1')"),
            6,
            "table name works as entity"
        );
        assert_eq!(count("SELECT 1 FROM audit.history('Opportunity', 'opp_1', since => now() + interval '1 day')"), 0);
        assert_eq!(count("SELECT 1 FROM audit.field_changes WHERE entity_type = 'Opportunity' AND field = 'amount'"), 2);
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

    #[pg_test]
    fn events_have_increasing_ids_utc_microsecond_times_and_transaction_ids() {
        let a = one::<i64>("SELECT audit.log_event('LOGIN')");
        let b = one::<i64>("SELECT audit.log_event('LOGOUT')");
        assert!(b > a);
        assert_eq!(
            count(&format!(
                "SELECT 1 FROM audit.events WHERE id IN ({a}, {b}) AND txid = pg_current_xact_id()"
            )),
            2
        );
        assert_eq!(one::<bool>(&format!("SELECT occurred_at = statement_timestamp() OR occurred_at <= now() + interval '1 minute' FROM audit.events WHERE id = {b}")), true);
        assert_eq!(
            one::<i32>(&format!(
                "SELECT octet_length(hash) FROM audit.events WHERE id = {a}"
            )),
            32
        );
    }
}
