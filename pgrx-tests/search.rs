//! Search, the query API, saved filters and export on a seeded dataset.

#[pgrx::pg_schema]
mod tests {
    use crate::tests::{assert_error, count, error_of, json, one, run};
    use pgrx::prelude::*;
    use serde_json::json;

    /// Nine events on two tables and two application events, with known ids
    /// relative to `base` (the id before seeding).
    fn seed() -> i64 {
        run("CREATE TABLE srch_opp (id text PRIMARY KEY, stage text, amount int)");
        run("CREATE TABLE srch_contact (id int PRIMARY KEY, email text)");
        run("SELECT audit.enable('srch_opp', entity_name => 'Opportunity')");
        run("SELECT audit.enable('srch_contact')");
        let base = one::<i64>("SELECT max(id) FROM audit.events");
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
        one::<i64>(
            r#"SELECT audit.log_event('LOGIN_FAILED', 'User', 'mallory', '{"reason": "bad password"}')"#,
        );
        one::<i64>(r#"SELECT audit.log_event('EXPORT', 'Opportunity', NULL, '{"rows": 250}')"#);
        run("SELECT audit.clear_context()");
        base
    }

    /// Offsets (from `base`) of the events a search returns, in result order.
    fn found(base: i64, query: &str) -> Vec<i64> {
        let sql = format!(
            "SELECT coalesce(jsonb_agg(id - {base} ORDER BY id DESC), '[]') FROM audit.search($q${query}$q$, 1000) WHERE id > {base}"
        );
        serde_json::from_value(json(&sql)).unwrap()
    }

    #[pg_test]
    fn every_key_finds_exactly_its_events() {
        let base = seed();
        // Offsets: 1 o1 insert, 2 o1 stage, 3 o2 insert, 4 o2 stage+amount, 5-6 contacts insert,
        // 7 contact update (AI), 8 o1 delete, 9 LOGIN_FAILED, 10 EXPORT.
        let cases: [(&str, Vec<i64>); 22] = [
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
            assert_eq!(found(base, query), expected, "{query}");
        }
        assert_eq!(found(base, "date:7d action:LOGIN_FAILED"), vec![9]);
        let today = one::<String>("SELECT (now() AT TIME ZONE 'UTC')::date::text");
        run("SET LOCAL timezone = 'UTC'");
        assert_eq!(found(base, &format!("date:{today} user:copilot")), vec![7]);
        assert_eq!(
            found(base, &format!("date:{today}..{today} user:copilot")),
            vec![7]
        );
        assert_eq!(
            found(base, &format!("date:>{today} user:copilot")),
            Vec::<i64>::new()
        );
    }

    #[pg_test]
    fn keyset_pages_are_stable_under_inserts() {
        let base = seed();
        let page = |cursor: &str| -> Vec<i64> {
            serde_json::from_value(json(&format!(
                "SELECT coalesce(jsonb_agg(id - {base} ORDER BY id DESC), '[]') FROM audit.search('user:sales.*', 2, {cursor})"
            )))
            .unwrap()
        };
        assert_eq!(page("NULL"), vec![8, 4]);
        run("INSERT INTO srch_opp VALUES ('o3', 'Lead', 1)");
        run("SELECT audit.set_context(actor => 'sales.zed')");
        run("INSERT INTO srch_opp VALUES ('o4', 'Lead', 1)");
        assert_eq!(page(&format!("'{}'", base + 4)), vec![3, 2]);
        assert_eq!(page(&format!("'{}'", base + 2)), vec![1]);
        assert_error(
            "SELECT * FROM audit.search('user:x', 0)",
            "22023",
            "max_rows",
        );
        assert_error(
            "SELECT * FROM audit.search('user:x', 10, 'abc')",
            "22023",
            "invalid cursor",
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
        let explained = one::<String>("SELECT audit.explain_search($$user:x' action:UPDATE$$)");
        assert!(
            explained.contains("e.actor = $1[1] AND e.action = upper($1[2])"),
            "{explained}"
        );
        assert!(explained.contains("$1 = '{x'',UPDATE}'"), "{explained}");
    }

    #[pg_test]
    fn query_api_pages_events_and_stats() {
        let base = seed();
        let page = json("SELECT audit.list_events(user_id => 'sales.admin', page_size => 2)");
        let ids: Vec<i64> = page["events"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["id"].as_i64().unwrap() - base)
            .collect();
        assert_eq!(ids, vec![8, 2]);
        let cursor = page["next_cursor"].as_str().unwrap().to_owned();
        assert_eq!(cursor, (base + 2).to_string());
        let next = json(&format!("SELECT audit.list_events(user_id => 'sales.admin', page_size => 2, cursor => '{cursor}')"));
        assert_eq!(next["events"][0]["id"].as_i64().unwrap() - base, 1);
        assert_eq!(next["next_cursor"], json!(null));
        assert_eq!(json("SELECT jsonb_array_length(audit.list_events(action => 'insert', entity_type => 'Opportunity')->'events')"), json!(2));
        assert_eq!(json("SELECT jsonb_array_length(audit.list_events(start_date => now() + interval '1 day')->'events')"), json!(0));
        assert_error(
            "SELECT audit.list_events(page_size => 501)",
            "22023",
            "between 1 and 500",
        );

        let event = json(&format!("SELECT audit.get_event({})", base + 4));
        assert_eq!(
            event["changes"],
            json!({"stage": {"old": "Qualification", "new": "Closed Won"}, "amount": {"old": "50", "new": "75"}})
        );
        assert_eq!(event["hash"].as_str().unwrap().len(), 64);
        assert_error("SELECT audit.get_event(-1)", "P0002", "does not exist");
        assert_eq!(
            json("SELECT jsonb_array_length(audit.entity_events('opportunity', 'o1'))"),
            json!(3)
        );

        // (Inside one test statement, events occur at now() itself: widen the window.)
        let stats = json("SELECT audit.stats(now() - interval '1 day', now() + interval '1 day')");
        assert_eq!(stats["by_action"]["LOGIN_FAILED"], json!(1));
        assert_eq!(stats["failed_logins"], json!(1));
        assert_eq!(stats["exports"], json!({"count": 1, "rows": 250}));
        assert_eq!(stats["by_source"]["AI"], json!(1));
        assert_eq!(stats["by_entity_type"]["srch_contact"], json!(3));
        assert_eq!(
            stats["top_actors"][0],
            json!({"actor": "sales.admin", "events": 3})
        );
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
        let base = seed();
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
        let mine = format!("SELECT coalesce(jsonb_agg(id - {base} ORDER BY id DESC), '[]') FROM audit.search_saved('my deals') WHERE id > {base}");
        assert_eq!(json(&mine), json!([4, 2]));
        run("RESET ROLE");
        run("SET LOCAL ROLE srch_bob");
        assert_eq!(
            one::<String>("SELECT string_agg(name, ',') FROM audit.saved_filters"),
            "ai edits"
        );
        assert_eq!(
            count(&format!(
                "SELECT 1 FROM audit.search_saved('ai edits') WHERE id > {base}"
            )),
            1
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

    #[pg_test]
    fn export_writes_lines_and_is_recorded() {
        let base = seed();
        let csv: Vec<String> = serde_json::from_value(json(
            "SELECT jsonb_agg(line) FROM audit.export('entity:Opportunity id:o2') AS line",
        ))
        .unwrap();
        assert_eq!(csv.len(), 3);
        assert_eq!(csv[0], "id,occurred_at,actor,actor_role,action,entity_type,entity_id,changes,ip,user_agent,session_id,source,org_id,metadata,statement_id,hash");
        assert!(csv[1].starts_with(&format!("{},", base + 3)), "{}", csv[1]);
        assert!(csv[2].contains(r#","{""stage"": {""new"": ""Closed Won"", ""old"": ""Qualification""}, ""amount"": {""new"": ""75"", ""old"": ""50""}}","#), "{}", csv[2]);
        assert_eq!(
            json("SELECT metadata FROM audit.events WHERE action = 'EXPORT' ORDER BY id DESC LIMIT 1"),
            json!({"query": "entity:Opportunity id:o2", "format": "csv", "rows": 2, "include_metadata": true})
        );
        let doc = one::<String>(
            "SELECT string_agg(line, E'\\n') FROM audit.export('id:o2', 'JSON', false) AS line",
        );
        let parsed: serde_json::Value = serde_json::from_str(&doc).unwrap();
        assert_eq!(parsed.as_array().unwrap().len(), 2);
        assert!(parsed[0].get("metadata").is_none());
        let lines: Vec<String> = serde_json::from_value(json(
            "SELECT jsonb_agg(line) FROM audit.export('id:o2', 'ndjson') AS line",
        ))
        .unwrap();
        assert_eq!(lines.len(), 2);
        for line in lines {
            assert!(serde_json::from_str::<serde_json::Value>(&line).unwrap()["hash"].is_string());
        }
        assert_eq!(count("SELECT 1 FROM audit.events WHERE action = 'EXPORT' AND entity_type = 'audit.events'"), 3);
        assert_error(
            "SELECT * FROM audit.export('id:o2', 'xml')",
            "22023",
            "unknown export format",
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
