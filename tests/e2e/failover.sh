#!/usr/bin/env bash
# Failover: a streaming standby of an audited primary is promoted after the
# primary crashed with committed events its worker had not stored yet. The
# standby runs no audit worker while in recovery; once promoted, its worker
# creates the replication slot and resumes from the position replicated in
# audit.materializer_state. That position predates the base backup the standby
# was made from, so the worker warns that the WAL before it is gone (events
# committed there and never stored are lost, as the README says), records the
# gap in the trail as a WAL_GAP event, and reads on
# from the oldest WAL it has: every event committed on the old primary after
# the backup is stored exactly once (nothing of a transaction the crash left
# open), numbered on without a gap; the replicated chain and a digest taken on
# the old primary still verify, and new changes are stored after them.
set -euo pipefail
E2E_DIR=/tmp/audit-e2e-failover; E2E_PORT=55457
source "$(dirname "$0")/common.bash"
pri=$E2E_DIR/primary; pri_port=$E2E_PORT
sby=$E2E_DIR/standby; sby_port=55458
cluster_stop "$pri"; cluster_stop "$sby"; rm -rf "$E2E_DIR"; mkdir -p "$E2E_DIR"
[ "$(id -u)" != 0 ] || chown "$RUN_USER" "$E2E_DIR"
settings=("shared_preload_libraries = 'audit'" "audit.database = 'crm'" "audit.seal_interval = '200ms'"
          "wal_keep_size = '256MB'" "timezone = 'UTC'")
cluster_start "$pri" "$pri_port" "${settings[@]}"
AUDIT_HOLDER=
cleanup() {
  [ -n "$AUDIT_HOLDER" ] && kill "$AUDIT_HOLDER" 2>/dev/null
  cluster_stop "$sby"; cluster_stop "$pri"
}
trap cleanup EXIT
on_pri() { HOST_DIR=$pri PORT=$pri_port DB=crm "$@"; }
on_sby() { HOST_DIR=$sby PORT=$sby_port DB=crm "$@"; }
# shellcheck disable=SC2046
pri_psql() { psql $(on_pri psql_args) "$@"; }
count_by_action() { # count_by_action [CONDITION]: "ACTION:N ..." of the events matching CONDITION
  sql "SELECT string_agg(action || ':' || n, ' ' ORDER BY action)
         FROM (SELECT action, count(*) n FROM audit.events WHERE ${1:-true} GROUP BY action) a"
}

HOST_DIR=$pri PORT=$pri_port sql "CREATE DATABASE crm" >/dev/null
on_pri sql "CREATE EXTENSION audit" >/dev/null
on_pri sql "CREATE TABLE deals (id int PRIMARY KEY, stage text)" >/dev/null
on_pri sql "SELECT count(*) FROM audit.enable('deals')" >/dev/null
on_pri sql "INSERT INTO deals SELECT g, 'New' FROM generate_series(1, 100) g" >/dev/null
on_pri wait_for "the primary's worker runs" "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'audit'" "1"
check "the primary stores and seals its events" "$(on_pri sql "SELECT audit.seal()")|$(on_pri count_by_action)" "t|CONFIG_CHANGE:1 INSERT:100"

# --- The primary's worker is held back (a session holds a lock its state update
# waits for) from here to the crash: its saved position stays before the base
# backup the standby is made from, so the events committed before the backup
# are not in the standby's WAL, and are lost with the primary.
digest=$(on_pri sql "SELECT audit.digest()")   # what an auditor keeps outside the database
hold_audit_worker pri_psql
held_stored=$(on_pri sql "SELECT count(*) FROM audit.events")
for _ in $(seq 1 3); do on_pri sql "SELECT audit.log_event('BEFORE_BACKUP')" >/dev/null; done

# --- A streaming standby, taken from the running primary.
mkdir -p "$sby"; [ "$(id -u)" != 0 ] || chown "$RUN_USER" "$sby"
as_pg "$PG_BIN/pg_basebackup" -h "$pri" -p "$pri_port" -U "$RUN_USER" -D "$sby/data" -R -X stream -c fast
printf "port = %s\nunix_socket_directories = '%s'\n" "$sby_port" "$sby" | as_pg tee -a "$sby/data/postgresql.conf" >/dev/null
as_pg env -u RUST_BACKTRACE "$PG_BIN/pg_ctl" -D "$sby/data" -l "$sby/server.log" -w start >/dev/null
check "the standby is in recovery and reads the replicated trail" \
  "$(on_sby sql "SELECT pg_is_in_recovery()")|$(on_sby count_by_action)" "t|CONFIG_CHANGE:1 INSERT:100"
check "no audit worker runs on the standby" \
  "$(on_sby sql "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'audit'")" "0"

# --- More changes commit on the held primary; one transaction stays open.
on_pri sql "UPDATE deals SET stage = 'Won' WHERE id <= 60" >/dev/null
on_pri sql "INSERT INTO deals SELECT g, 'New' FROM generate_series(101, 150) g" >/dev/null
for _ in $(seq 1 10); do on_pri sql "SELECT audit.log_event('LOGIN')" >/dev/null; done
on_pri session_open open
on_pri session_run open "BEGIN; INSERT INTO deals VALUES (999, 'Lost in the crash');" >/dev/null
deals_rows=$(on_pri sql "SELECT count(*) FROM deals")
check "the held primary has stored none of them" "$(on_pri sql "SELECT count(*) FROM audit.events")" "$held_stored"
target=$(on_pri sql "SELECT pg_current_wal_flush_lsn()")
on_sby wait_for "the standby has replayed the primary's WAL" "SELECT pg_last_wal_replay_lsn() >= '$target'" "t"

# --- The primary crashes; the standby is promoted.
as_pg "$PG_BIN/pg_ctl" -D "$pri/data" -m immediate stop >/dev/null
kill "$AUDIT_HOLDER" 2>/dev/null || true; AUDIT_HOLDER=
session_close open
as_pg "$PG_BIN/pg_ctl" -D "$sby/data" -w promote >/dev/null
slot="audit_$(on_sby sql "SELECT oid FROM pg_database WHERE datname = 'crm'")"
on_sby wait_for "the promoted server starts its audit worker" \
  "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'audit'" "1" 60
on_sby wait_for "the worker creates its replication slot there" \
  "SELECT count(*) FROM pg_replication_slots WHERE slot_name = '$slot'" "1"
HOST_DIR=$sby wait_for_log "it warns that the WAL from its saved position to the backup's start is gone" \
  "WARNING:  audit materializer: the WAL from .* is no longer on this server; events committed there that were not stored yet are missing from the trail"
check "it stores what the old primary committed after the backup but had not stored" \
  "$(on_sby sql "SELECT audit.sync()")|$(on_sby sql "SELECT count(*) FROM audit.events WHERE action NOT IN ('WORKER_HOLD', 'BEFORE_BACKUP', 'WAL_GAP')")" "t|$((1 + 100 + 60 + 50 + 10))"
check "each committed change exactly once, by action" \
  "$(on_sby count_by_action "action <> 'WORKER_HOLD'")" \
  "CONFIG_CHANGE:1 INSERT:150 LOGIN:10 UPDATE:60 WAL_GAP:1"
check "the trail records the gap itself: a WAL_GAP event of the worker, first after the replicated events" \
  "$(on_sby sql "SELECT actor || ' ' || source || ' ' || audit.action_category(action) || ' ' || ((metadata->>'from_lsn')::pg_lsn < (metadata->>'to_lsn')::pg_lsn)::text
                   || ' ' || (id = (SELECT min(id) FROM audit.events WHERE action IN ('UPDATE', 'LOGIN'))  - 1)::text
                   FROM audit.events WHERE action = 'WAL_GAP'")" "audit worker SYSTEM config true true"
check "application code cannot forge one" \
  "$(on_sby sql "SELECT audit.log_event('wal_gap')" 2>&1 | grep -o 'action WAL_GAP is written only by the audit worker')" \
  "action WAL_GAP is written only by the audit worker"
check "the events committed before the backup, never stored, are the ones missing" \
  "$(on_sby sql "SELECT count(*) FROM audit.events WHERE action = 'BEFORE_BACKUP'")" "0"
check "the stored changes are the committed rows" \
  "$(on_sby sql "SELECT count(*) FROM deals d FULL JOIN (SELECT DISTINCT ON (ev.entity_id) ev.entity_id::int AS id, ev.changes->'stage'->>'new' AS stage
                                                           FROM audit.events ev WHERE ev.entity_type = 'deals' ORDER BY ev.entity_id, ev.id DESC) e USING (id)
                  WHERE d.stage IS DISTINCT FROM e.stage")|$(on_sby sql "SELECT count(*) FROM deals")" "0|$deals_rows"
check "nothing of the transaction the crash left open" \
  "$(on_sby sql "SELECT count(*) FROM audit.events WHERE entity_id = '999'")" "0"
total=$(on_sby sql "SELECT count(*) FROM audit.events")
check "ids run on from the replicated trail: 1..N without gaps or repeats" \
  "$(on_sby sql "SELECT min(id) || '-' || max(id) || ' ' || count(DISTINCT id) FROM audit.events")" "1-$total $total"
check "the chain verifies after sealing, and so does the digest taken on the old primary" \
  "$(on_sby sql "SELECT audit.seal()")|$(on_sby sql "SELECT valid || ' ' || unsealed_events FROM audit.verify()")|$(on_sby sql "SELECT valid FROM audit.verify_digest('$digest')")" \
  "t|true 0|t"
on_sby sql "UPDATE deals SET stage = 'Renewed' WHERE id = 1" >/dev/null
check "a change on the promoted server is stored after them" \
  "$(on_sby sql "SELECT audit.sync()")|$(on_sby sql "SELECT id FROM audit.events WHERE changes->'stage'->>'new' = 'Renewed'")" "t|$((total + 1))"

finish
