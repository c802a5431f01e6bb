#!/usr/bin/env bash
# The background worker on a preloaded cluster: it seals on its own, applies
# retention on its own (archive, then delete with a deletion log), survives a
# kill -9 in the middle of a run without losing or duplicating anything, and
# the chain still verifies afterwards.
set -euo pipefail
E2E_DIR=/tmp/audit-e2e-worker; E2E_PORT=55453
source "$(dirname "$0")/common.bash"
dir=$E2E_DIR; port=$E2E_PORT
cluster_start "$dir" "$port" "shared_preload_libraries = 'audit'" "audit.database = 'crm'" \
  "audit.seal_interval = '200ms'" "audit.retention_interval = 0" "timezone = 'UTC'"
trap 'cluster_stop "$dir"' EXIT
sql "CREATE DATABASE crm"
export DB=crm
sql "CREATE EXTENSION audit"
sql "CREATE TABLE leads (id int PRIMARY KEY, status text, score int)"
sql "SELECT count(*) FROM audit.enable('leads')" >/dev/null
sql "INSERT INTO leads SELECT g, 'New', 0 FROM generate_series(1, 1000) g"
for round in 1 2; do sql "UPDATE leads SET score = score + $round" >/dev/null; done
for i in $(seq 1 20); do sql "SELECT audit.log_event('LOGIN')" >/dev/null; done
total=$(sql "SELECT count(*) FROM audit.events")
record_changes=$(sql "SELECT count(*) FROM audit.events WHERE audit.action_category(action) = 'record_changes'")
check "events written" "$total" "3021"

wait_for "the worker is visible in pg_stat_activity" \
  "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'audit'" "1"
wait_for "the worker seals every committed event" "SELECT unsealed_events FROM audit.verify()" "0"
check "the sealed chain verifies" "$(sql "SELECT valid FROM audit.verify()")" "t"

# SIGHUP: sealing off, a new event stays unsealed; back on, it is sealed.
sql "ALTER SYSTEM SET audit.seal_interval = 0" >/dev/null; sql "SELECT pg_reload_conf()" >/dev/null; sleep 1
sql "SELECT audit.log_event('LOGOUT')" >/dev/null; sleep 1
check "sealing off after reload" "$(sql "SELECT unsealed_events FROM audit.verify()")" "1"
sql "ALTER SYSTEM SET audit.seal_interval = '200ms'" >/dev/null; sql "SELECT pg_reload_conf()" >/dev/null
wait_for "sealing back on after reload" "SELECT unsealed_events FROM audit.verify()" "0"

# Retention by the worker, its clock moved 7 years ahead: record changes and logins are archived.
sql "ALTER SYSTEM SET audit.retention_time_offset = '7 years 1 day'" >/dev/null
sql "ALTER SYSTEM SET audit.retention_batch_size = 100" >/dev/null
# Cold storage: archive partitions go to the tablespace named by audit.archive_tablespace.
mkdir -p "$dir/cold" && { [ "$(id -u)" != 0 ] || chown "$RUN_USER" "$dir/cold"; }
sql "CREATE TABLESPACE audit_cold LOCATION '$dir/cold'" >/dev/null
sql "ALTER SYSTEM SET audit.archive_tablespace = 'audit_cold'" >/dev/null
sql "ALTER SYSTEM SET audit.retention_interval = '1s'" >/dev/null
sql "SELECT pg_reload_conf()" >/dev/null
wait_for "the worker archives record changes on its own" \
  "SELECT count(*) FROM audit_archive.events WHERE audit.action_category(action) = 'record_changes'" "$record_changes"
check "archived events still verify" "$(sql "SELECT valid FROM audit.verify()")" "t"
check "archive partitions live in audit.archive_tablespace" \
  "$(sql "SELECT string_agg(DISTINCT coalesce(t.spcname, 'default'), ',') FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
          LEFT JOIN pg_tablespace t ON t.oid = c.reltablespace WHERE i.inhparent = 'audit_archive.events'::regclass")" "audit_cold"
grep -q "audit worker retention run" "$dir/server.log" && check "the worker logs its runs" yes yes

# Deletion, killed with -9 in the middle: small batches make the run long.
sql "ALTER SYSTEM SET audit.retention_batch_size = 5" >/dev/null
sql "ALTER SYSTEM SET audit.retention_time_offset = '7 years 5 months'" >/dev/null
sql "SELECT pg_reload_conf()" >/dev/null
wait_for "deletion under way" "SELECT count(*) > 0 FROM audit.deletion_log" "t" 30
worker_pid=$(sql "SELECT pid FROM pg_stat_activity WHERE backend_type = 'audit'")
kill -9 "$worker_pid"
echo "killed the worker (pid $worker_pid) in the middle of a retention run"
sleep 2
as_pg "$PG_BIN/pg_isready" -h "$dir" -p "$port" -t 30 >/dev/null
wait_for "the worker restarts after the crash" \
  "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'audit' AND pid <> $worker_pid" "1" 60
sql "ALTER SYSTEM SET audit.retention_batch_size = 1000" >/dev/null; sql "SELECT pg_reload_conf()" >/dev/null
wait_for "the next run completes the deletion" "SELECT count(*) FROM audit_archive.events" "0" 120
check "nothing lost: every archived event is in the deletion log" \
  "$(sql "SELECT sum(event_count) FROM audit.deletion_log")" "$((record_changes + 21))"
check "nothing duplicated" "$(sql "SELECT count(*) = count(DISTINCT id) FROM (SELECT unnest(event_ids) AS id FROM audit.deletion_log) d")" "t"
check "only config events remain live" "$(sql "SELECT string_agg(DISTINCT action, ',') FROM audit.events")" "CONFIG_CHANGE"
check "the chain verifies after deletion" "$(sql "SELECT valid FROM audit.verify()")" "t"
check "a run now has nothing to do" \
  "$(sql "SELECT sum(archived + deleted) FROM audit.run_retention(now() + interval '7 years 5 months')")" "0"

# SIGTERM: a clean exit.
sql "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE backend_type = 'audit'" >/dev/null
sleep 1
grep -q "audit worker exiting" "$dir/server.log" && check "SIGTERM: the worker exits cleanly" yes yes

finish
