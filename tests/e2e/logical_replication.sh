#!/usr/bin/env bash
# Rows applied by a logical-replication subscriber are captured when the table
# was enabled with capture_replicated => true, and only then.
set -euo pipefail
E2E_DIR=/tmp/audit-e2e-repl; E2E_PORT=55452
source "$(dirname "$0")/common.bash"
cluster_start "$E2E_DIR" "$E2E_PORT" "wal_level = logical" "max_replication_slots = 4" "max_wal_senders = 4" "timezone = 'UTC'"
cleanup() { DB=sub sql "DROP SUBSCRIPTION IF EXISTS s" >/dev/null 2>&1 || true; cluster_stop "$E2E_DIR"; }
trap cleanup EXIT

sql "CREATE DATABASE pub"; sql "CREATE DATABASE sub"
for db in pub sub; do
  DB=$db sql "CREATE TABLE deals (id int PRIMARY KEY, stage text); CREATE TABLE other (id int PRIMARY KEY, v text)"
done
DB=pub sql "CREATE PUBLICATION p FOR TABLE deals, other"
DB=pub sql "SELECT pg_create_logical_replication_slot('audit_e2e_slot', 'pgoutput')" >/dev/null
DB=sub sql "CREATE EXTENSION audit"
DB=sub sql "SELECT count(*) FROM audit.enable('deals', capture_replicated => true)" >/dev/null
DB=sub sql "SELECT count(*) FROM audit.enable('other')" >/dev/null
DB=sub sql "CREATE SUBSCRIPTION s CONNECTION 'host=$E2E_DIR port=$E2E_PORT dbname=pub user=$RUN_USER'
            PUBLICATION p WITH (create_slot = false, slot_name = 'audit_e2e_slot', copy_data = false)"

DB=pub sql "INSERT INTO deals VALUES (1, 'Lead'), (2, 'Lead'); INSERT INTO other VALUES (1, 'x')"
DB=pub sql "UPDATE deals SET stage = 'Won' WHERE id = 1"
DB=pub sql "DELETE FROM deals WHERE id = 2"
DB=pub sql "UPDATE other SET v = 'y'"
export DB=sub
wait_for "the subscriber applied every change" "SELECT string_agg(id || stage, ',' ORDER BY id) || '|' || (SELECT v FROM other) FROM deals" "1Won|y"
check "replicated changes to deals are captured" \
  "$(sql "SELECT string_agg(action || ':' || entity_id || ':' || changes::text, ' ' ORDER BY id) FROM audit.events WHERE entity_type = 'deals'")" \
  'INSERT:1:{"id": {"new": "1"}, "stage": {"new": "Lead"}} INSERT:2:{"id": {"new": "2"}, "stage": {"new": "Lead"}} UPDATE:1:{"stage": {"new": "Won", "old": "Lead"}} DELETE:2:{"id": {"old": "2"}, "stage": {"old": "Lead"}}'
check "a table enabled without capture_replicated is not" \
  "$(sql "SELECT count(*) FROM audit.events WHERE entity_type = 'other'")" "0"
sql "UPDATE deals SET stage = 'Lost' WHERE id = 1"
check "local changes on the subscriber are captured once" \
  "$(sql "SELECT count(*) FROM audit.events WHERE entity_type = 'deals' AND changes->'stage'->>'new' = 'Lost'")" "1"
check "the subscriber's trail verifies" "$(sql "SELECT valid FROM audit.verify()")" "t"
finish
