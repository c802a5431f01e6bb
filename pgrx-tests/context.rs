//! Acting context and application events.

#[pgrx::pg_schema]
mod tests {
    use crate::tests::{assert_error, count, error_of, json, one, run};
    use pgrx::prelude::*;
    use serde_json::json;

    #[pg_test]
    fn context_is_recorded_on_captured_events() {
        run("CREATE TABLE ctx_deal (id int PRIMARY KEY, stage text)");
        run("SELECT audit.enable('ctx_deal')");
        run(
            r#"SELECT audit.set_context(actor => 'sales.admin@acme.test', actor_role => 'ADMIN', ip => '203.0.113.42',
                  user_agent => 'Chrome/124.0', session_id => 'sess_abc123', source => 'ui', org_id => 'org_xyz789',
                  metadata => '{"request_id": "r1", "n": 2}')"#,
        );
        run("INSERT INTO ctx_deal VALUES (1, 'Lead')");
        let row = json(
            "SELECT jsonb_build_object('actor', actor, 'role', actor_role, 'ip', ip, 'ua', user_agent, 'sess', session_id,
                     'source', source, 'org', org_id, 'meta', metadata)
               FROM audit.events WHERE entity_type = 'ctx_deal'",
        );
        assert_eq!(
            row,
            json!({"actor": "sales.admin@acme.test", "role": "ADMIN", "ip": "203.0.113.42", "ua": "Chrome/124.0",
                   "sess": "sess_abc123", "source": "UI", "org": "org_xyz789", "meta": {"request_id": "r1", "n": 2}})
        );
    }

    /// The context is cached per backend: every input it is resolved from must
    /// show in the next event once it changes, and only then.
    #[pg_test]
    fn cached_context_follows_settings_role_and_application_name() {
        run("CREATE TABLE ctx_step (id int PRIMARY KEY, n int)");
        run("SELECT audit.enable('ctx_step')");
        run("CREATE ROLE ctx_clerk");
        run("GRANT ALL ON ctx_step TO ctx_clerk");
        run("INSERT INTO ctx_step VALUES (1, 0)");
        // Each step sets n to its own number: that finds its event (pending
        // events have no id to tell the latest by).
        let event_of = |n: i32| {
            json(&format!(
                "SELECT jsonb_build_object('actor', actor, 'ua', user_agent, 'ip', ip, 'meta', metadata)
                   FROM audit.events WHERE entity_type = 'ctx_step' AND changes->'n'->>'new' = '{n}'"
            ))
        };
        let step = |n: i32| {
            run(&format!("UPDATE ctx_step SET n = {n}"));
            event_of(n)
        };
        run("SELECT audit.set_context(actor => 'ann', ip => '203.0.113.1', metadata => '{\"a\": 1}')");
        run("SET LOCAL application_name = 'crm-web'");
        assert_eq!(
            step(1),
            json!({"actor": "ann", "ua": "crm-web", "ip": "203.0.113.1", "meta": {"a": 1}})
        );
        run("SELECT audit.set_context(actor => 'bob', ip => '203.0.113.2', metadata => '{\"a\": 2}')");
        assert_eq!(
            step(2),
            json!({"actor": "bob", "ua": "crm-web", "ip": "203.0.113.2", "meta": {"a": 2}})
        );
        run("SET LOCAL application_name = 'crm-batch'");
        assert_eq!(step(3)["ua"], json!("crm-batch"));
        run("SELECT audit.clear_context()");
        run("SET LOCAL ROLE ctx_clerk");
        run("UPDATE ctx_step SET n = 4");
        run("RESET ROLE");
        let clerk = event_of(4);
        assert_eq!(clerk["actor"], json!("ctx_clerk"));
        assert_eq!(clerk["meta"], json!(null));
    }

    #[pg_test]
    fn defaults_without_context() {
        run("SELECT audit.clear_context()");
        run("SET LOCAL application_name = 'crm-worker'");
        run("SELECT audit.log_event('LOGIN', 'ctx_default', 'd1')");
        let row = json(
            "SELECT jsonb_build_object('actor', actor = current_user, 'ua', user_agent, 'source', source, 'role', actor_role,
                     'ip', ip IS NOT DISTINCT FROM inet_client_addr(), 'stmt', statement_id, 'org', org_id,
                     'session', session_id, 'meta', metadata)
               FROM audit.events WHERE entity_type = 'ctx_default'",
        );
        assert_eq!(
            row,
            json!({"actor": true, "ua": "crm-worker", "source": "SQL", "role": null, "ip": true, "stmt": null,
                   "org": null, "session": null, "meta": null})
        );
    }

    #[pg_test]
    fn source_is_case_insensitive_and_validated() {
        for (given, stored) in [
            ("ui", "UI"),
            ("Api", "API"),
            ("automation", "AUTOMATION"),
            ("IMPORT", "IMPORT"),
            ("system", "SYSTEM"),
            ("ai", "AI"),
            ("sql", "SQL"),
        ] {
            run(&format!("SELECT audit.set_context(source => '{given}')"));
            run(&format!(
                "SELECT audit.log_event('API_CALL', 'ctx_source', '{given}')"
            ));
            assert_eq!(
                one::<String>(&format!(
                    "SELECT source FROM audit.events WHERE entity_type = 'ctx_source' AND entity_id = '{given}'"
                )),
                stored
            );
        }
        let before = count("SELECT 1 FROM audit.events");
        assert_error(
            "SELECT audit.set_context(source => 'web')",
            "22023",
            "invalid audit source",
        );
        assert_error(
            "SELECT audit.set_context(metadata => '[1, 2]')",
            "22023",
            "JSON object",
        );
        assert!(error_of("SELECT audit.set_context(ip => 'not-an-ip')")
            .starts_with("22P02: invalid input syntax for type inet"));
        // A bad value set directly as a setting is refused when an event is written.
        run("SET LOCAL audit.source = 'carrier-pigeon'");
        assert_error(
            "SELECT audit.log_event('LOGIN')",
            "22023",
            "invalid audit source",
        );
        run("SET LOCAL audit.source = ''");
        assert_eq!(
            count("SELECT 1 FROM audit.events"),
            before,
            "nothing written"
        );
    }

    #[pg_test]
    fn context_is_transaction_local_by_default_and_session_wide_on_request() {
        run("SELECT audit.set_context(actor => 'local.user')");
        assert_eq!(
            one::<String>("SELECT current_setting('audit.actor')"),
            "local.user"
        );
        run("SELECT audit.set_context(actor => 'session.user', is_local => false)");
        assert_eq!(
            one::<String>("SELECT current_setting('audit.actor')"),
            "session.user"
        );
        run("SELECT audit.clear_context()");
        assert_eq!(one::<String>("SELECT current_setting('audit.actor')"), "");
        run("SELECT audit.log_event('LOGOUT', 'ctx_local', 'cleared')");
        assert_eq!(
            one::<bool>(
                "SELECT actor = current_user FROM audit.events WHERE entity_type = 'ctx_local'"
            ),
            true
        );
    }

    /// An application event is pending until its transaction commits: every
    /// field as given, but no id, statement, hash or block yet.
    #[pg_test]
    fn log_event_leaves_a_pending_application_event() {
        run(
            r#"SELECT audit.set_context(actor => 'copilot', source => 'AI', metadata => '{"conversation_id": "c_42", "model": "m"}')"#,
        );
        run(
            r#"SELECT audit.log_event('export', 'Opportunity', 'opp_1', '{"rows": 250, "model": "override"}')"#,
        );
        let row = json("SELECT to_jsonb(e) - 'occurred_at' - 'txid' - 'ip' - 'user_agent' FROM audit.events e WHERE entity_id = 'opp_1'");
        assert_eq!(
            row,
            json!({"id": null, "action": "EXPORT", "actor": "copilot", "actor_role": null, "changes": null, "entity_id": "opp_1",
                   "entity_type": "Opportunity", "metadata": {"conversation_id": "c_42", "model": "override", "rows": 250},
                   "org_id": null, "session_id": null, "source": "AI", "statement_id": null, "hash": null, "block_id": null})
        );
        assert_eq!(
            one::<bool>("SELECT txid = pg_current_xact_id() AND occurred_at = statement_timestamp() FROM audit.events WHERE entity_id = 'opp_1'"),
            true
        );
        assert_eq!(
            one::<String>("SELECT event_count || ' ' || entity_ids::text || ' ' || changes::text FROM audit.chunks WHERE entity_ids = '{opp_1}'"),
            "1 {opp_1} {NULL}"
        );
        let actions = [
            "LOGIN",
            "LOGIN_FAILED",
            "LOGOUT",
            "PASSWORD_CHANGE",
            "MFA_ENROLL",
            "MFA_CHALLENGE",
            "SESSION_EXPIRED",
            "LOCKOUT",
            "IMPERSONATION",
            "EXPORT",
            "REPORT_RUN",
            "API_CALL",
            "CONFIG_CHANGE",
            "PERMISSION_CHANGE",
            "VIEW",
            "BULK_IMPORT",
            "BULK_DELETE",
            "MERGE",
            "DEAL_WON",
        ];
        for action in actions {
            run(&format!(
                "SELECT audit.log_event('{action}', 'ctx_actions', '{action}')"
            ));
            assert_eq!(
                one::<String>(&format!(
                    "SELECT action FROM audit.events WHERE entity_type = 'ctx_actions' AND entity_id = '{action}'"
                )),
                action
            );
        }
        assert_eq!(
            count("SELECT 1 FROM audit.events WHERE entity_type = 'ctx_actions' AND id IS NULL AND hash IS NULL"),
            actions.len() as i64
        );
    }

    #[pg_test]
    fn log_event_refuses_bad_input() {
        let before = count("SELECT 1 FROM audit.events");
        assert_error(
            "SELECT audit.log_event('UPDATE', 'Deal', '1')",
            "22023",
            "capture triggers",
        );
        assert_error(
            "SELECT audit.log_event('drop table x')",
            "22023",
            "letters, digits and underscores",
        );
        assert_error("SELECT audit.log_event('')", "22023", "1 to 64");
        assert_error(
            "SELECT audit.log_event('LOGIN', NULL, NULL, '\"text\"')",
            "22023",
            "JSON object",
        );
        assert_eq!(
            count("SELECT 1 FROM audit.events"),
            before,
            "nothing written"
        );
    }
}
