//! Retention policies and the append-only guards of what retention keeps.
//! Archiving and deleting events needs stored ones, which a test's
//! transaction never has: tests/pg_regress/sql/retention.sql runs them.

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
        // The worker's WAL_GAP record is kept as a config event, not a record change.
        assert_eq!(
            one::<String>("SELECT audit.action_category('WAL_GAP')"),
            "config"
        );
        assert!(one::<bool>(
            "SELECT 'WAL_GAP' = ANY (actions) FROM audit.retention_policies WHERE category = 'config'"
        ));
        assert!(one::<bool>(
            "SELECT audit._category_condition('record_changes') LIKE '%WAL_GAP%'"
        ));
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
        // The change is itself an event, pending until the transaction commits.
        assert_eq!(
            json("SELECT jsonb_build_object('action', action, 'entity_id', entity_id, 'actor', actor, 'source', source,
                         'metadata', metadata, 'pending', id IS NULL AND hash IS NULL)
                    FROM audit.events WHERE entity_type = 'audit.retention_policies'"),
            json!({"action": "CONFIG_CHANGE", "entity_id": "login", "actor": "dpo", "source": "UI", "pending": true,
                   "metadata": {"setting": "retention", "category": "login", "old": "2 years", "new": "3 years"}})
        );
        assert_eq!(
            one::<String>("SELECT keep FROM audit.set_retention('CONFIG', 'infinity')"),
            "forever"
        );
        assert_eq!(
            one::<String>("SELECT keep FROM audit.retention_policies WHERE category = 'config'"),
            "infinity"
        );
        assert_eq!(
            json("SELECT metadata FROM audit.events WHERE entity_type = 'audit.retention_policies' AND entity_id = 'config'"),
            json!({"setting": "retention", "category": "config", "old": "10 years", "new": "forever"})
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
        assert_eq!(count("SELECT 1 FROM audit.deletion_log"), 1);
        // The archive: retention moves chunks into it; nobody changes them there.
        run(
            "SELECT audit._ensure_archive_partition(date_trunc('month', now() AT TIME ZONE 'UTC'))",
        );
        run("INSERT INTO audit_archive.event_chunks (id, block_id, occurred_at, txid, event_count, action, entity_ids, changes)
             VALUES (1, 1, now(), pg_current_xact_id(), 2, 'LOGIN', '{a,b}', ARRAY[NULL, NULL]::jsonb[])");
        assert_eq!(
            one::<String>("SELECT string_agg(id || ':' || entity_id, ',' ORDER BY id) FROM audit_archive.events"),
            "1:a,2:b"
        );
        assert_error(
            "UPDATE audit_archive.event_chunks SET actor = 'x'",
            "42501",
            "append-only",
        );
        assert_error(
            "DELETE FROM audit_archive.event_chunks",
            "42501",
            "append-only",
        );
        assert_error(
            "TRUNCATE audit_archive.event_chunks",
            "42501",
            "append-only",
        );
        let partition = one::<String>("SELECT inhrelid::regclass::text FROM pg_inherits WHERE inhparent = 'audit_archive.event_chunks'::regclass LIMIT 1");
        assert_error(&format!("TRUNCATE {partition}"), "42501", "append-only");
        assert_eq!(count("SELECT 1 FROM audit_archive.events"), 2);
        // A user setting audit.maintenance gets nothing: it is superuser-only.
        run("CREATE ROLE ret_user");
        run("SET LOCAL ROLE ret_user");
        assert!(error_of("SET LOCAL audit.maintenance = 'on'")
            .starts_with("42501: permission denied to set parameter"));
        run("RESET ROLE");
    }
}
