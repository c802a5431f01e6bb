#!/usr/bin/env bash
# Rows applied by a logical-replication subscriber are captured when the table
# was enabled with capture_replicated => true, and only then. Publisher and
# subscriber are two clusters, each auditing its own database (audit.database):
# each trail holds its own events, numbered and sealed by its own worker.
set -euo pipefail
E2E_DIR=/tmp/audit-e2e-repl; E2E_PORT=55452
source "$(dirname "$0")/common.bash"
pub=$E2E_DIR/pub; pub_port=$E2E_PORT
sub=$E2E_DIR/sub; sub_port=55456
cluster_stop "$pub"; cluster_stop "$sub"; rm -rf "$E2E_DIR"; mkdir -p "$E2E_DIR"
cluster_start "$pub" "$pub_port" "shared_preload_libraries = 'audit'" "audit.database = 'pub'" \
  "wal_level = logical" "max_replication_slots = 4" "max_wal_senders = 4" "timezone = 'UTC'"
cluster_start "$sub" "$sub_port" "shared_preload_libraries = 'audit'" "audit.database = 'sub'" "timezone = 'UTC'"
on_pub() { HOST_DIR=$pub PORT=$pub_port DB=pub "$@"; }
on_sub() { HOST_DIR=$sub PORT=$sub_port DB=sub "$@"; }
cleanup() { on_sub sql "DROP SUBSCRIPTION IF EXISTS s" >/dev/null 2>&1 || true; cluster_stop "$sub"; cluster_stop "$pub"; }
trap cleanup EXIT

HOST_DIR=$pub PORT=$pub_port sql "CREATE DATABASE pub" >/dev/null
HOST_DIR=$sub PORT=$sub_port sql "CREATE DATABASE sub" >/dev/null
for side in on_pub on_sub; do
  $side sql "CREATE TABLE deals (id int PRIMARY KEY, stage text); CREATE TABLE other (id int PRIMARY KEY, v text)" >/dev/null
  $side sql "CREATE EXTENSION audit" >/dev/null
done
on_pub sql "SELECT count(*) FROM audit.enable('deals')" >/dev/null
on_pub sql "SELECT count(*) FROM audit.enable('other')" >/dev/null
on_sub sql "SELECT count(*) FROM audit.enable('deals', capture_replicated => true)" >/dev/null
on_sub sql "SELECT count(*) FROM audit.enable('other')" >/dev/null
on_pub sql "CREATE PUBLICATION p FOR TABLE deals, other" >/dev/null
on_pub sql "SELECT pg_create_logical_replication_slot('audit_e2e_slot', 'pgoutput')" >/dev/null
on_sub sql "CREATE SUBSCRIPTION s CONNECTION 'host=$pub port=$pub_port dbname=pub user=$RUN_USER'
            PUBLICATION p WITH (create_slot = false, slot_name = 'audit_e2e_slot', copy_data = false)" >/dev/null
on_pub wait_for "the subscription streams from the publisher" \
  "SELECT count(*) FROM pg_stat_replication WHERE application_name = 's' AND state = 'streaming'" "1" 60
for side in on_pub on_sub; do
  $side wait_for "${side#on_}: the worker serves the database, capture ready" \
    "SELECT worker_running || ' ' || capture_ready FROM audit.status()" "true true" 30
done

on_pub sql "INSERT INTO deals VALUES (1, 'Lead'), (2, 'Lead'); INSERT INTO other VALUES (1, 'x')" >/dev/null
on_pub sql "UPDATE deals SET stage = 'Won' WHERE id = 1" >/dev/null
on_pub sql "DELETE FROM deals WHERE id = 2" >/dev/null
on_pub sql "UPDATE other SET v = 'y'" >/dev/null
on_sub wait_for "the subscriber applied every change" \
  "SELECT string_agg(id || stage, ',' ORDER BY id) || '|' || (SELECT v FROM other) FROM deals" "1Won|y"
# The apply worker commits asynchronously: wait for its events rather than for audit.sync().
on_sub wait_for "replicated changes to deals are captured, numbered after the two enable events" \
  "SELECT string_agg(id || ':' || action || ':' || entity_id || ':' || changes::text, ' ' ORDER BY id) FROM audit.events WHERE entity_type = 'deals'" \
  '3:INSERT:1:{"id": {"new": "1"}, "stage": {"new": "Lead"}} 4:INSERT:2:{"id": {"new": "2"}, "stage": {"new": "Lead"}} 5:UPDATE:1:{"stage": {"new": "Won", "old": "Lead"}} 6:DELETE:2:{"id": {"old": "2"}, "stage": {"old": "Lead"}}'
check "a table enabled without capture_replicated is not" \
  "$(on_sub sql "SELECT audit.sync()")|$(on_sub sql "SELECT count(*) FROM audit.events WHERE entity_type = 'other'")" "t|0"
on_sub sql "UPDATE deals SET stage = 'Lost' WHERE id = 1" >/dev/null
on_sub sql "UPDATE other SET v = 'z'" >/dev/null
check "local changes on the subscriber are captured once" \
  "$(on_sub sql "SELECT audit.sync()")|$(on_sub sql "SELECT string_agg(id || ':' || entity_type || ':' || coalesce(changes->'stage'->>'new', '-'), ',' ORDER BY id) FROM audit.events WHERE id > 6")" \
  "t|7:deals:Lost,8:other:-"
check "the subscriber's trail: ids 1..8, sealed, verified" \
  "$(on_sub sql "SELECT audit.seal()")|$(on_sub sql "SELECT valid || ' ' || unsealed_events || ' ' || events_checked FROM audit.verify()")" "t|true 0 8"

check "the publisher's trail holds its own changes, in commit order" \
  "$(on_pub sql "SELECT audit.sync()")|$(on_pub sql "SELECT string_agg(id || ':' || action || ':' || coalesce(entity_type, '') || ':' || coalesce(entity_id, ''), ',' ORDER BY id) FROM audit.events")" \
  "t|1:CONFIG_CHANGE:audit.tracked:public.deals,2:CONFIG_CHANGE:audit.tracked:public.other,3:INSERT:deals:1,4:INSERT:deals:2,5:INSERT:other:1,6:UPDATE:deals:1,7:DELETE:deals:2,8:UPDATE:other:1"
check "the publisher's trail is sealed and verifies" \
  "$(on_pub sql "SELECT audit.seal()")|$(on_pub sql "SELECT valid || ' ' || unsealed_events || ' ' || events_checked FROM audit.verify()")" "t|true 0 8"
finish
