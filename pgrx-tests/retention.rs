//! Retention policies, archival and deletion (the worker calls the same step).

#[pgrx::pg_schema]
mod tests {
    use crate::tests::{assert_error, count, error_of, json, one, run};
    use pgrx::prelude::*;
    use serde_json::json;

    #[pg_test]
    fn default_policies_and_their_ranges() {
        let policies = json(
            "SELECT jsonb_object_agg(category, jsonb_build_array(keep, min_keep, max_keep)) FROM audit.retention_policies",
        );
        assert_eq!(
            policies,
            json!({
                "record_changes": ["7 years", "1 year", "10 years"],
                "login": ["2 years", "1 year", "7 years"],
                "api": ["1 year", "6 mons", "5 years"],
                "export": ["7 years", "3 years", "10 years"],
                "config": ["10 years", "5 years", "infinity"],
                "bulk": ["5 years", "2 years", "10 years"]
            })
        );
        assert_eq!(
            one::<String>("SELECT audit.action_category('LOGIN_FAILED')"),
            "login"
        );
        assert_eq!(
            one::<String>("SELECT audit.action_category('DEAL_WON')"),
            "record_changes"
        );
    }

    #[pg_test]
    fn set_retention_checks_the_range_and_is_audited() {
        run("SELECT audit.set_context(actor => 'dpo', source => 'UI')");
        assert_eq!(
            one::<String>("SELECT keep FROM audit.set_retention('login', '3 years')"),
            "3 years"
        );
        assert_eq!(
            one::<String>("SELECT keep FROM audit.retention_policies WHERE category = 'login'"),
            "3 years"
        );
        assert_eq!(
            json("SELECT metadata FROM audit.events WHERE entity_type = 'audit.retention_policies' ORDER BY id DESC LIMIT 1"),
            json!({"setting": "retention", "category": "login", "old": "2 years", "new": "3 years"})
        );
        assert_eq!(
            one::<String>(
                "SELECT actor FROM audit.events WHERE entity_type = 'audit.retention_policies'"
            ),
            "dpo"
        );
        assert_eq!(
            one::<String>("SELECT keep FROM audit.set_retention('CONFIG', 'infinity')"),
            "forever"
        );
        assert_eq!(
            one::<String>("SELECT keep FROM audit.retention_policies WHERE category = 'config'"),
            "infinity"
        );
        let before = count("SELECT 1 FROM audit.events");
        assert_error(
            "SELECT audit.set_retention('api', '3 months')",
            "22023",
            "allowed: 6 months to 5 years",
        );
        assert_error(
            "SELECT audit.set_retention('login', 'infinity')",
            "22023",
            "cannot be kept forever",
        );
        assert_error(
            "SELECT audit.set_retention('record_changes', '11 years')",
            "22023",
            "1 year to 10 years",
        );
        assert_error(
            "SELECT audit.set_retention('logins', '1 year')",
            "22023",
            "unknown retention category",
        );
        assert_error(
            "SELECT audit.set_retention('api', '45 days')",
            "22023",
            "whole months",
        );
        assert_error(
            "SELECT audit.set_retention('api', 'soon')",
            "22007",
            "invalid retention",
        );
        assert_eq!(
            count("SELECT 1 FROM audit.events"),
            before,
            "refusals write nothing"
        );
        run("CREATE ROLE ret_clerk");
        run("SET LOCAL ROLE ret_clerk");
        assert!(error_of("SELECT audit.set_retention('api', '1 year')")
            .starts_with("42501: permission denied for function set_retention"));
        run("RESET ROLE");
    }

    #[pg_test]
    fn run_retention_archives_then_deletes_with_a_deletion_log() {
        run("CREATE TABLE ret_deal (id int PRIMARY KEY, stage text)");
        run("SELECT audit.enable('ret_deal')");
        run("INSERT INTO ret_deal SELECT g, 'Lead' FROM generate_series(1, 30) g");
        run("UPDATE ret_deal SET stage = 'Won' WHERE id <= 10");
        one::<i64>("SELECT audit.log_event('LOGIN')");
        one::<i64>("SELECT audit.log_event('API_CALL')");
        let record_changes = count(
            "SELECT 1 FROM audit.events WHERE audit.action_category(action) = 'record_changes'",
        );
        let all = count("SELECT 1 FROM audit.events");
        run("SET LOCAL audit.retention_batch_size = 7");
        // Two years and a day on: API calls (1 year + 90 days grace) are archived and
        // deleted, logins (2 years) archived, nothing else.
        let as_of = "now() + interval '2 years 1 day'";
        assert_eq!(
            json(&format!("SELECT jsonb_object_agg(category, jsonb_build_array(to_archive, to_delete)) FROM audit.retention_preview({as_of})")),
            json!({"api": [1, 1], "bulk": [0, 0], "config": [0, 0], "export": [0, 0], "login": [1, 0], "record_changes": [0, 0]})
        );
        assert_eq!(
            json(&format!("SELECT jsonb_object_agg(category, jsonb_build_array(archived, deleted)) FROM audit.run_retention({as_of})")),
            json!({"api": [1, 1], "bulk": [0, 0], "config": [0, 0], "export": [0, 0], "login": [1, 0], "record_changes": [0, 0],
                   "whole archive partitions": [0, 0]})
        );
        assert_eq!(
            one::<String>("SELECT string_agg(action, ',') FROM audit_archive.events"),
            "LOGIN"
        );
        assert_eq!(
            one::<String>(
                "SELECT category || ' ' || event_count || ' ' || method FROM audit.deletion_log"
            ),
            "api 1 rows"
        );
        assert_error(
            "UPDATE audit_archive.events SET actor = 'x'",
            "42501",
            "append-only",
        );
        // Seven years on: record changes too, in batches of 7; after the grace they are deleted.
        run("SELECT * FROM audit.run_retention(now() + interval '7 years 1 day')");
        assert_eq!(count("SELECT 1 FROM audit_archive.events WHERE audit.action_category(action) = 'record_changes'"), record_changes);
        assert_eq!(
            count("SELECT 1 FROM audit.events"),
            all - record_changes - 2
        );
        assert_eq!(
            count("SELECT 1 FROM audit_archive.events WHERE octet_length(hash) = 32"),
            record_changes,
            "hashes kept"
        );
        assert_eq!(
            json("SELECT problems FROM audit.verify()"),
            json!([]),
            "archived events still verify"
        );
        // Once its whole month is past the grace, the archive partition is dropped whole.
        let deleted = json("SELECT jsonb_object_agg(category, deleted) FROM audit.run_retention(now() + interval '7 years 5 months')");
        // (The login event went row by row at the previous run, past its own grace.)
        assert_eq!(deleted["whole archive partitions"], json!(record_changes));
        assert_eq!(one::<String>("SELECT string_agg(category || ':' || method, ',' ORDER BY id) FROM audit.deletion_log"), "api:rows,login:rows,record_changes:partition");
        assert_eq!(count("SELECT 1 FROM audit_archive.events"), 0);
        assert_eq!(
            one::<i64>("SELECT sum(event_count)::int8 FROM audit.deletion_log"),
            record_changes + 2
        );
        assert_eq!(count("SELECT 1 FROM audit.deletion_log WHERE cardinality(event_ids) = event_count AND first_event_id = event_ids[1]"), count("SELECT 1 FROM audit.deletion_log"));
        // The config events (10 years) remain, and so does a valid trail.
        assert_eq!(
            count("SELECT 1 FROM audit.events"),
            all - record_changes - 2
        );
        assert_eq!(one::<bool>("SELECT valid FROM audit.verify()"), true);
        // Nothing more to do.
        assert_eq!(one::<i64>("SELECT sum(archived + deleted)::int8 FROM audit.run_retention(now() + interval '7 years 5 months')"), 0);
    }

    #[pg_test]
    fn deletion_log_and_archive_are_append_only() {
        run("INSERT INTO audit.deletion_log (category, oldest, newest, event_count, first_event_id, last_event_id, event_ids, method)
             VALUES ('api', now(), now(), 1, 1, 1, '{1}', 'rows')");
        assert_error("DELETE FROM audit.deletion_log", "42501", "append-only");
        assert_error(
            "UPDATE audit.deletion_log SET event_count = 0",
            "42501",
            "append-only",
        );
        assert_error("TRUNCATE audit.deletion_log", "42501", "append-only");
        // A user setting audit.maintenance gets nothing: it is superuser-only.
        run("CREATE ROLE ret_user");
        run("SET LOCAL ROLE ret_user");
        assert!(error_of("SET LOCAL audit.maintenance = 'on'")
            .starts_with("42501: permission denied to set parameter"));
        run("RESET ROLE");
    }
}
