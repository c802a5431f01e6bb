//! Search, the query API, saved filters and export on a seeded dataset.
//!
//! The seeded events are this transaction's, pending (no ids): what pages
//! through ids (cursors, keyset pages, get_event of an event) is in
//! tests/pg_regress/sql/search.sql, on stored events.

#[pgrx::pg_schema]
mod tests {
    use crate::tests::{assert_error, count, error_of, json, one, run};
    use pgrx::prelude::*;
    use serde_json::json;

    /// The seeded events, numbered 1 to 10 in the order they are written:
    /// action, entity type and id tell each apart.
    const SEEDED: [&str; 10] = [
        "INSERT Opportunity o1",
        "UPDATE Opportunity o1",
        "INSERT Opportunity o2",
        "UPDATE Opportunity o2",
        "INSERT srch_contact 1",
        "INSERT srch_contact 2",
        "UPDATE srch_contact 1",
        "DELETE Opportunity o1",
        "LOGIN_FAILED User mallory",
        "EXPORT Opportunity -",
    ];

    /// Eight events on two tables and two application events (see SEEDED).
    fn seed() {
        run("CREATE TABLE srch_opp (id text PRIMARY KEY, stage text, amount int)");
        run("CREATE TABLE srch_contact (id int PRIMARY KEY, email text)");
        run("SELECT audit.enable('srch_opp', entity_name => 'Opportunity')");
        run("SELECT audit.enable('srch_contact')");
        let steps = [
            (
                "sales.admin",
                "ADMIN",
                "UI",
                "203.0.113.7",
                "org_a",
                "s1",
                "INSERT INTO srch_opp VALUES ('o1', 'Qualification', 100)",
            ),
            (
                "sales.admin",
                "ADMIN",
                "UI",
                "203.0.113.7",
                "org_a",
                "s1",
                "UPDATE srch_opp SET stage = 'Proposal' WHERE id = 'o1'",
            ),
            (
                "sales.bob",
                "REP",
                "API",
                "198.51.100.9",
                "org_a",
                "s2",
                "INSERT INTO srch_opp VALUES ('o2', 'Qualification', 50)",
            ),
            (
                "sales.bob",
                "REP",
                "API",
                "198.51.100.9",
                "org_a",
                "s2",
                "UPDATE srch_opp SET stage = 'Closed Won', amount = 75 WHERE id = 'o2'",
            ),
            (
                "importer",
                "SYSTEM",
                "IMPORT",
                "10.1.2.3",
                "org_b",
                "s3",
                "INSERT INTO srch_contact VALUES (1, 'ann@acme.test'), (2, 'bob@initech.test')",
            ),
            (
                "copilot",
                "AI",
                "AI",
                "203.0.113.200",
                "org_b",
                "s4",
                "UPDATE srch_contact SET email = 'ann@globex.test' WHERE id = 1",
            ),
            (
                "sales.admin",
                "ADMIN",
                "UI",
                "203.0.113.7",
                "org_a",
                "s1",
                "DELETE FROM srch_opp WHERE id = 'o1'",
            ),
        ];
        for (actor, role, source, ip, org, session, statement) in steps {
            run(&format!(
                "SELECT audit.set_context(actor => '{actor}', actor_role => '{role}', source => '{source}', ip => '{ip}',
                        org_id => '{org}', session_id => '{session}')"
            ));
            run(statement);
        }
        run("SELECT audit.set_context(actor => 'mallory', source => 'UI', ip => '192.0.2.66')");
        run(
            r#"SELECT audit.log_event('LOGIN_FAILED', 'User', 'mallory', '{"reason": "bad password"}')"#,
        );
        run(r#"SELECT audit.log_event('EXPORT', 'Opportunity', NULL, '{"rows": 250}')"#);
        run("SELECT audit.clear_context()");
    }

    /// The numbers (in SEEDED) of the events `rows` (a query returning
    /// action, entity_type and entity_id) returns, highest (newest) first. The CONFIG_CHANGE events of
    /// audit.enable(), written before the seed, are left out.
    fn seeded(rows: &str) -> Vec<usize> {
        let labels: Vec<String> = serde_json::from_value(json(&format!(
            "SELECT coalesce(jsonb_agg(action || ' ' || coalesce(entity_type, '-') || ' ' || coalesce(entity_id, '-')), '[]')
               FROM ({rows}) e WHERE entity_type IS DISTINCT FROM 'audit.tracked'"
        )))
        .unwrap();
        let mut numbers: Vec<usize> = labels
            .iter()
            .map(|label| {
                1 + SEEDED
                    .iter()
                    .position(|s| s == label)
                    .unwrap_or_else(|| panic!("{rows}: not a seeded event: {label}"))
            })
            .collect();
        numbers.sort_unstable_by(|a, b| b.cmp(a));
        numbers
    }

    /// The seeded events a search finds.
    fn found(query: &str) -> Vec<usize> {
        seeded(&format!("SELECT * FROM audit.search($q${query}$q$, 1000)"))
    }

    #[pg_test]
    fn every_key_finds_exactly_its_events() {
        seed();
        // 1 o1 insert, 2 o1 stage, 3 o2 insert, 4 o2 stage+amount, 5-6 contacts insert,
        // 7 contact update (AI), 8 o1 delete, 9 LOGIN_FAILED, 10 EXPORT.
        let cases: [(&str, Vec<usize>); 22] = [
            ("user:sales.admin", vec![8, 2, 1]),
            ("user:sales.*", vec![8, 4, 3, 2, 1]),
            ("user:sales.admin user:importer", vec![8, 6, 5, 2, 1]),
            ("role:rep", vec![4, 3]),
            ("action:update", vec![7, 4, 2]),
            ("entity:opportunity", vec![10, 8, 4, 3, 2, 1]),
            ("entity:srch_opp action:INSERT", vec![3, 1]),
            ("entity:srch_contact", vec![7, 6, 5]),
            ("id:o2", vec![4, 3]),
            ("field:amount", vec![8, 4, 3, 1]),
            ("field:stage old_value:Qualification", vec![4, 2]),
            ("new_value:\"Closed Won\"", vec![4]),
            ("old_value:Proposal", vec![8]),
            ("source:ai", vec![7]),
            ("ip:203.0.113.0/24", vec![8, 7, 2, 1]),
            ("ip:198.51.100.9", vec![4, 3]),
            ("org:org_b session:s3", vec![6, 5]),
            ("action:UPDATE -user:copilot", vec![4, 2]),
            ("globex", vec![7]),
            ("\"bad password\"", vec![9]),
            ("user:sales.admin date:today", vec![8, 2, 1]),
            ("user:sales.admin date:<2020-01-01", vec![]),
        ];
        for (query, expected) in cases {
            assert_eq!(found(query), expected, "{query}");
        }
        assert_eq!(found("date:7d action:LOGIN_FAILED"), vec![9]);
        let today = one::<String>("SELECT (now() AT TIME ZONE 'UTC')::date::text");
        run("SET LOCAL timezone = 'UTC'");
        assert_eq!(found(&format!("date:{today} user:copilot")), vec![7]);
        assert_eq!(
            found(&format!("date:{today}..{today} user:copilot")),
            vec![7]
        );
        assert_eq!(
            found(&format!("date:>{today} user:copilot")),
            Vec::<usize>::new()
        );
    }

    #[pg_test]
    fn bad_queries_name_position_and_fix() {
        let error = error_of("SELECT * FROM audit.search('action:UPDATE usr:ann')");
        assert_eq!(error, "42601: search query: unknown search key \"usr\" at position 15 | Did you mean user:? Keys: user, role, action, entity, id, field, old_value, new_value, source, ip, org, session, date.");
        assert_error(
            "SELECT * FROM audit.search('date:2026-02-30')",
            "42601",
            "day must be 01 to 28",
        );
        assert_error(
            "SELECT * FROM audit.search('ip:203.0.113.7/24')",
            "42601",
            "host bits",
        );
        assert_error(
            "SELECT * FROM audit.search('old_value:\"open')",
            "42601",
            "unterminated quote",
        );
        assert_error(
            "SELECT * FROM audit.search('user:x', 0)",
            "22023",
            "max_rows",
        );
        assert_error(
            "SELECT * FROM audit.search('user:x', 10001)",
            "22023",
            "between 1 and 10000",
        );
        assert_error(
            "SELECT * FROM audit.search('user:x', 10, 'abc')",
            "22023",
            "invalid cursor",
        );
        // A bad query is refused before anything is read, by every entry point.
        for entry in [
            "SELECT * FROM audit.save_filter('bad', 'usr:x')",
            "SELECT * FROM audit.export('usr:x')",
            "SELECT audit.explain_search('usr:x')",
        ] {
            assert_error(entry, "42601", "unknown search key \"usr\"");
        }
        assert_eq!(
            count("SELECT 1 FROM audit.events WHERE action = 'EXPORT'"),
            0,
            "a refused export is not recorded"
        );
        let explained = one::<String>("SELECT audit.explain_search($$user:x' action:UPDATE$$)");
        assert!(
            explained.contains("r.actor = $1[1] AND r.action = upper($1[2])"),
            "{explained}"
        );
        assert!(
            explained.contains("FROM audit._event_rows r"),
            "{explained}"
        );
        assert!(explained.contains("$1 = '{x'',UPDATE}'"), "{explained}");
    }

    #[pg_test]
    fn query_api_filters_and_stats_cover_pending_events() {
        seed();
        let listed = |args: &str| {
            seeded(&format!(
                "SELECT e->>'action' AS action, e->>'entity_type' AS entity_type, e->>'entity_id' AS entity_id
                   FROM jsonb_array_elements(audit.list_events({args})->'events') e"
            ))
        };
        assert_eq!(listed("user_id => 'sales.admin'"), vec![8, 2, 1]);
        assert_eq!(
            listed("action => 'insert', entity_type => 'Opportunity'"),
            vec![3, 1]
        );
        assert_eq!(listed("entity_type => 'srch_contact'"), vec![7, 6, 5]);
        assert_eq!(
            listed("start_date => now() + interval '1 day'"),
            Vec::<usize>::new()
        );
        let page = json("SELECT audit.list_events(user_id => 'sales.bob', page_size => 2)");
        assert_eq!(page["next_cursor"], json!(null), "one page holds them all");
        assert_eq!(
            page["events"][0]["id"],
            json!(null),
            "pending events have no id yet"
        );
        assert_eq!(page["events"][0]["hash"], json!(null));
        assert_error(
            "SELECT audit.list_events(page_size => 501)",
            "22023",
            "between 1 and 500",
        );
        assert_error(
            "SELECT audit.list_events(cursor => 'x1')",
            "22023",
            "invalid cursor",
        );
        assert_error("SELECT audit.get_event(-1)", "P0002", "does not exist");
        assert_eq!(
            json("SELECT jsonb_array_length(audit.entity_events('opportunity', 'o1'))"),
            json!(3)
        );
        assert_eq!(
            json("SELECT jsonb_agg(e->'changes'->'stage'->>'new' ORDER BY e->'changes'->'stage'->>'new') FROM jsonb_array_elements(audit.entity_events('srch_opp', 'o2')) e"),
            json!(["Closed Won", "Qualification"])
        );

        // (Inside one test statement, events occur at now() itself: widen the window.)
        let stats = json("SELECT audit.stats(now() - interval '1 day', now() + interval '1 day')");
        assert_eq!(stats["by_action"]["LOGIN_FAILED"], json!(1));
        assert_eq!(stats["failed_logins"], json!(1));
        assert_eq!(stats["exports"], json!({"count": 1, "rows": 250}));
        assert_eq!(stats["by_source"]["AI"], json!(1));
        assert_eq!(stats["by_entity_type"]["srch_contact"], json!(3));
        assert_eq!(stats["by_entity_type"]["Opportunity"], json!(6));
        assert_eq!(
            stats["top_actors"][0],
            json!({"actor": "sales.admin", "events": 3})
        );
        // The 10 seeded events and the 2 of audit.enable().
        assert_eq!(stats["total"], json!(12));
        assert_eq!(stats["per_day"].as_array().unwrap().len(), 1);
        assert_eq!(
            json(
                "SELECT audit.stats(now() + interval '1 day', now() + interval '2 days')->'total'"
            ),
            json!(0)
        );
    }

    #[pg_test]
    fn saved_filters_per_owner_and_shared() {
        seed();
        run("CREATE ROLE srch_ann IN ROLE audit_reader");
        run("CREATE ROLE srch_bob IN ROLE audit_reader");
        run("SET LOCAL ROLE srch_ann");
        run("SELECT * FROM audit.save_filter('my deals', 'entity:Opportunity action:UPDATE')");
        run("SELECT * FROM audit.save_filter('ai edits', 'source:AI', shared => true)");
        assert_error(
            "SELECT * FROM audit.save_filter('my deals', 'user:x')",
            "23505",
            "already have a saved filter",
        );
        assert_error(
            "SELECT * FROM audit.save_filter('broken', 'usr:x')",
            "42601",
            "unknown search key",
        );
        assert_eq!(count("SELECT 1 FROM audit.saved_filters"), 2);
        assert_eq!(
            seeded("SELECT * FROM audit.search_saved('my deals')"),
            vec![4, 2]
        );
        run("RESET ROLE");
        run("SET LOCAL ROLE srch_bob");
        assert_eq!(
            one::<String>("SELECT string_agg(name, ',') FROM audit.saved_filters"),
            "ai edits"
        );
        assert_eq!(
            seeded("SELECT * FROM audit.search_saved('ai edits')"),
            vec![7]
        );
        assert_error(
            "SELECT * FROM audit.search_saved('my deals')",
            "42704",
            "no saved filter",
        );
        assert_eq!(
            one::<bool>("SELECT audit.drop_filter('ai edits')"),
            false,
            "not bob's to drop"
        );
        run("RESET ROLE");
        run("SET LOCAL ROLE srch_ann");
        assert_eq!(one::<bool>("SELECT audit.drop_filter('ai edits')"), true);
        run("RESET ROLE");
    }

    /// Export reads the caller's pending events too (no id, no hash yet: empty
    /// fields), and is itself recorded.
    #[pg_test]
    fn export_writes_lines_and_is_recorded() {
        seed();
        let csv: Vec<String> = serde_json::from_value(json(
            "SELECT jsonb_agg(line) FROM audit.export('entity:Opportunity id:o2') AS line",
        ))
        .unwrap();
        assert_eq!(csv.len(), 3);
        assert_eq!(csv[0], "id,occurred_at,actor,actor_role,action,entity_type,entity_id,changes,ip,user_agent,session_id,source,org_id,metadata,statement_id,hash");
        for line in &csv[1..] {
            assert!(line.starts_with(",20"), "no id, then occurred_at: {line}");
            assert!(
                line.contains(",sales.bob,REP,") && line.ends_with(",s2,API,org_a,,,"),
                "{line}"
            );
        }
        assert!(csv.iter().any(|line| line.contains(r#","{""stage"": {""new"": ""Closed Won"", ""old"": ""Qualification""}, ""amount"": {""new"": ""75"", ""old"": ""50""}}","#)), "{csv:?}");
        assert_eq!(
            json("SELECT metadata FROM audit.events WHERE action = 'EXPORT' AND metadata->>'format' = 'csv'"),
            json!({"query": "entity:Opportunity id:o2", "format": "csv", "rows": 2, "include_metadata": true})
        );
        let doc = one::<String>(
            "SELECT string_agg(line, E'\\n') FROM audit.export('id:o2', 'JSON', false) AS line",
        );
        let parsed: serde_json::Value = serde_json::from_str(&doc).unwrap();
        assert_eq!(parsed.as_array().unwrap().len(), 2);
        assert!(parsed[0].get("metadata").is_none());
        assert_eq!(parsed[0]["entity_id"], json!("o2"));
        let lines: Vec<String> = serde_json::from_value(json(
            "SELECT jsonb_agg(line) FROM audit.export('id:o2', 'ndjson') AS line",
        ))
        .unwrap();
        assert_eq!(lines.len(), 2);
        for line in lines {
            let event = serde_json::from_str::<serde_json::Value>(&line).unwrap();
            assert_eq!(
                (&event["id"], &event["hash"], &event["actor"]),
                (&json!(null), &json!(null), &json!("sales.bob")),
                "{line}"
            );
        }
        assert_eq!(count("SELECT 1 FROM audit.events WHERE action = 'EXPORT' AND entity_type = 'audit.events' AND id IS NULL"), 3);
        assert_error(
            "SELECT * FROM audit.export('id:o2', 'xml')",
            "22023",
            "unknown export format",
        );
        assert_eq!(
            count("SELECT 1 FROM audit.events WHERE action = 'EXPORT' AND entity_type = 'audit.events'"),
            3,
            "a refused export is not recorded"
        );
    }

    #[pg_test]
    fn a_filter_shared_under_one_name_by_two_owners_is_ambiguous() {
        run("CREATE ROLE srch_x IN ROLE audit_reader");
        run("CREATE ROLE srch_y IN ROLE audit_reader");
        run("CREATE ROLE srch_z IN ROLE audit_reader");
        for owner in ["srch_x", "srch_y"] {
            run(&format!("SET LOCAL ROLE {owner}"));
            run("SELECT * FROM audit.save_filter('team view', 'action:UPDATE', shared => true)");
            run("RESET ROLE");
        }
        run("SET LOCAL ROLE srch_z");
        assert_error(
            "SELECT * FROM audit.search_saved('team view')",
            "42P08",
            "several users share a filter",
        );
        run("RESET ROLE");
        run("SET LOCAL ROLE srch_x");
        assert_eq!(
            error_of("SELECT count(*) FROM audit.search_saved('team view')"),
            "no error",
            "its owner uses their own"
        );
        run("RESET ROLE");
    }
}
