#!/usr/bin/env bash
# The background worker on a preloaded cluster whose audit.database is the test
# database. It is the materializer: committed changes and application events
# become stored events numbered 1..N in commit order, sealed on their own
# (audit.seal_interval, reloaded with SIGHUP). It keeps its replication slot,
# survives a kill -9 of itself and an immediate stop of the whole server in the
# middle of a burst without losing, repeating or inventing an event, stores a
# transaction left open across its restart once it commits, and a prepared one
# once COMMIT PREPARED. It applies retention on its own (archive, then delete
# with a deletion log, even when killed midway), drops its slot after DROP
# EXTENSION, and exits cleanly on SIGTERM. It writes the entity index of bulk
# statements as runs and merges them level by level. Upkeep that fails (a
# merge, a retention run) is a WARNING: the worker goes on.
set -euo pipefail
E2E_DIR=/tmp/audit-e2e-worker; E2E_PORT=55453
source "$(dirname "$0")/common.bash"
dir=$E2E_DIR; port=$E2E_PORT
cluster_start "$dir" "$port" "shared_preload_libraries = 'audit'" "audit.database = 'crm'" \
  "audit.seal_interval = '200ms'" "audit.retention_interval = 0" "timezone = 'UTC'" \
  "max_prepared_transactions = 5" "max_connections = 40"
burst_pid=
cleanup() {
  [ -n "$burst_pid" ] && kill "$burst_pid" 2>/dev/null
  [ "${E2E_KEEP:-0}" = 1 ] || cluster_stop "$dir"   # E2E_KEEP=1: leave the cluster up to look at
}
trap cleanup EXIT
server_start() { as_pg env -u RUST_BACKTRACE "$PG_BIN/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w start >/dev/null; }
worker_pid() { sql "SELECT pid FROM pg_stat_activity WHERE backend_type = 'audit'"; }
reload() { sql "ALTER SYSTEM SET $1 = '$2'" >/dev/null; sql "SELECT pg_reload_conf()" >/dev/null; }
log_event() { sql "SELECT audit.log_event('$1')" >/dev/null; }
unsealed() { sql "SELECT unsealed_events FROM audit.verify()"; }

sql "CREATE DATABASE crm" >/dev/null
export DB=crm
sql "CREATE EXTENSION audit" >/dev/null
slot="audit_$(sql "SELECT oid FROM pg_database WHERE datname = 'crm'")"
check "CREATE EXTENSION creates the replication slot $slot" \
  "$(sql "SELECT slot_type FROM pg_replication_slots WHERE slot_name = '$slot'")" "physical"
slot_start=$(sql "SELECT restart_lsn FROM pg_replication_slots WHERE slot_name = '$slot'")
# The worker started before crm existed and retries every 5 s.
wait_for "audit.status(): worker running, capture ready" \
  "SELECT worker_running || ' ' || capture_ready || ' ' || replication_slot FROM audit.status()" "true true $slot"
wait_for "the worker is visible in pg_stat_activity" \
  "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'audit' AND datname = 'crm'" "1"

# --- Materialization: ids 1..N in commit order, a statement's events consecutive.
sql "CREATE TABLE leads (id int PRIMARY KEY, status text, score int)" >/dev/null
sql "SELECT count(*) FROM audit.enable('leads')" >/dev/null   # a CONFIG_CHANGE event
sql "INSERT INTO leads SELECT g, 'New', 0 FROM generate_series(1, 1000) g" >/dev/null
for round in 1 2; do sql "UPDATE leads SET score = score + $round" >/dev/null; done
for _ in $(seq 1 20); do log_event LOGIN; done
check "audit.sync() returns once everything committed is stored" "$(sql "SELECT audit.sync()")" "t"
check "every committed event is stored, ids 1..N without gaps" \
  "$(sql "SELECT min(id) || ':' || max(id) || ':' || count(*) || ':' || count(DISTINCT id) FROM audit.events")" "1:3021:3021:3021"
check "ids follow commit order, each statement's events consecutive" \
  "$(sql "SELECT string_agg(action || ':' || lo || '-' || hi, ' ' ORDER BY lo)
            FROM (SELECT action, min(id) lo, max(id) hi FROM audit.events GROUP BY action, statement_id) s")" \
  "CONFIG_CHANGE:1-1 INSERT:2-1001 UPDATE:1002-2001 UPDATE:2002-3001 LOGIN:3002-3021"
check "a statement's events carry the id of its first event, application events none" \
  "$(sql "SELECT string_agg(DISTINCT coalesce(statement_id::text, action), ',') FROM audit.events")" "1002,2,2002,CONFIG_CHANGE,LOGIN"
check "stored events are not pending: every one has a hash and a block" \
  "$(sql "SELECT count(*) FROM audit.events WHERE hash IS NULL OR block_id IS NULL")" "0"
wait_for "the worker seals every stored event on its own" "SELECT unsealed_events FROM audit.verify()" "0"
check "the sealed chain verifies" "$(sql "SELECT valid || ' ' || events_checked FROM audit.verify()")" "true 3021"
check "the blocks seal ids 1..N, each block from where the previous ended" \
  "$(sql "SELECT min(first_event_id) || '-' || max(last_event_id) || ' ' ||
                 bool_and(first_event_id = coalesce(prev_last, 0) + 1 AND event_count = last_event_id - first_event_id + 1)
            FROM (SELECT *, lag(last_event_id) OVER (ORDER BY block_id) prev_last FROM audit.blocks) b")" "1-3021 true"

wait_for "the worker moves its slot up as it stores, never past where it would resume" \
  "SELECT s.restart_lsn > '$slot_start' AND s.restart_lsn <= m.restart_lsn
     FROM pg_replication_slots s, audit.materializer_state m WHERE s.slot_name = '$slot'" "t" 30

# --- The entity index of several-event chunks: a sorted run of record keys
# per store transaction, eight runs of a level merged into one of the next.
sql "UPDATE leads SET score = score + 10" >/dev/null
check "a bulk statement's record keys are stored as a run" \
  "$(sql "SELECT audit.sync()")|$(sql "SELECT count(*) > 0 FROM audit.entity_runs WHERE level = 0")" "t|t"
check "records are found through it" \
  "$(sql "SELECT count(*) FROM audit.history('leads', '77') WHERE action = 'UPDATE'")" "3"

# The worker stores at most about 768 kB of captured changes per transaction:
# 100,000 rows are updated, 5,000 per transaction, while the worker is held;
# once let go it finds every commit there at once. Then ten more bulk
# statements, each stored on its own: enough runs for merges.
sql "CREATE TABLE big (id int PRIMARY KEY, n int)" >/dev/null
sql "INSERT INTO big SELECT g, 0 FROM generate_series(1, 100000) g" >/dev/null
sql "SELECT count(*) FROM audit.enable('big')" >/dev/null
hold_audit_worker psql_e2e
for from in $(seq 1 5000 100000); do sql "UPDATE big SET n = 1 WHERE id BETWEEN $from AND $from + 4999" >/dev/null; done
release_audit_worker psql_e2e
sql "SELECT audit.sync(600000)" >/dev/null
check "no store transaction took more than 58,000 events (768 kB of 15-byte changes, plus the last commit's)" \
  "$(sql "SELECT count(*) > 1 AND max(n) <= 58000 FROM (SELECT sum(event_count) n FROM audit.event_chunks
                                                          WHERE entity_type = 'big' GROUP BY xmin) t")" "t"
for from in $(seq 1 1000 10000); do
  sql "UPDATE big SET n = 2 WHERE id BETWEEN $from AND $from + 99" >/dev/null; sql "SELECT audit.sync()" >/dev/null
done
runs_per_level="SELECT string_agg(level || ':' || n, ' ' ORDER BY level) FROM (SELECT level, count(*) n FROM audit.entity_runs GROUP BY level) l"
wait_for "the worker merges every level that holds eight runs" \
  "SELECT max(level) >= 1 AND max(n) < 8 FROM (SELECT level, count(*) n FROM audit.entity_runs GROUP BY level) l" "t" 30
echo "   (runs per level: $(sql "$runs_per_level"))"
check "a merged run holds the pairs of the runs it replaced, each once" \
  "$(sql "SELECT sum(pairs) FROM audit.entity_runs")" \
  "$(sql "SELECT count(DISTINCT (audit.entity_hash(e), c.id)) FROM audit.event_chunks c, unnest(c.entity_ids) e
          WHERE c.event_count > 1 AND e IS NOT NULL")"
check "every record's bulk events are found through the runs (one record in 997)" \
  "$(sql "SELECT count(*) FROM generate_series(1, 100000, 997) g
          WHERE (SELECT count(*) FROM audit._record_events(ARRAY['big'], g::text) WHERE action = 'UPDATE')
                <> CASE WHEN g % 1000 BETWEEN 1 AND 100 AND g <= 9100 THEN 2 ELSE 1 END")" "0"
check "a lookup reads one row per run at most" \
  "$(sql "SELECT count(*) <= (SELECT count(*) FROM audit.entity_runs)
            FROM audit.entity_run_rows WHERE slot = ANY (ARRAY(SELECT ((b::int8) << 32) | ((audit.entity_hash('99999')::int8 & 4294967295) >> (32 - b))
                                                                FROM generate_series(1, 12) b) || 0::int8)")" "t"

# --- Upkeep that fails (here a merge, as the runs' rows are found corrupt)
# is a WARNING from the same worker process, which goes on storing and tries
# again later.
levels_settled="SELECT coalesce(max(n), 0) < 8 FROM (SELECT level, count(*) n FROM audit.entity_runs GROUP BY level) l"
bulk_stored() { # bulk_stored FROM: a bulk statement, stored (a run of its own)
  sql "UPDATE big SET n = n + 1 WHERE id BETWEEN $1 AND $1 + 9" >/dev/null; sql "SELECT audit.sync()" >/dev/null
}
pid=$(worker_pid)
from=20001
until [ "$(sql "$levels_settled")" = t ] && [ "$(sql "SELECT count(*) FROM audit.entity_runs WHERE level = 0")" -gt 0 ]; do
  bulk_stored $from; from=$((from + 1000)); sleep 0.2
done
sql "CREATE TABLE saved_run_rows AS SELECT * FROM audit.entity_run_rows" >/dev/null
sql "UPDATE audit.entity_run_rows SET pairs = '\x02'::bytea" >/dev/null
check "a lookup through a corrupt row is an error that says so" \
  "$(psql $(psql_args) -v VERBOSITY=verbose -c "SELECT count(*) FROM audit.history('big', '50001')" 2>&1 | grep -o 'XX001: corrupt entity run row' | head -1)" \
  "XX001: corrupt entity run row"
for _ in $(seq 1 8); do bulk_stored $from; from=$((from + 1000)); done
wait_for_log "a failed merge is logged as a WARNING by the worker" \
  "\[$pid\] WARNING:  audit worker could not merge the entity index: corrupt entity run row: "
sql "UPDATE audit.entity_run_rows r SET pairs = s.pairs FROM saved_run_rows s WHERE r.run_id = s.run_id AND r.slot = s.slot" >/dev/null
bulk_stored $from
check "the worker went on: the same process stored what came next" "$(worker_pid)" "$pid"
wait_for "and merges once the rows read again" "$levels_settled" "t" 30
check "the record is found again" \
  "$(sql "SELECT count(*) FROM audit.history('big', '50001') WHERE action = 'UPDATE'")" "1"

# --- audit.seal_interval, reloaded with SIGHUP.
# 1 hour: a stored event stays unsealed (the old 200 ms would have sealed it well within the second).
reload audit.seal_interval 1h
stays_unsealed() { log_event LOGIN; sql "SELECT audit.sync()" >/dev/null; sleep 1; sql "SELECT unsealed_events > 0 FROM audit.verify()"; }
wait_until "seal_interval 1h after reload: stored events stay unsealed" "t" 30 stays_unsealed
check "audit.seal() seals at once" "$(sql "SELECT audit.seal()")|$(unsealed)" "t|0"
# 0: every batch the worker stores is sealed in the same transaction.
reload audit.seal_interval 0
sealed_with_batch() { log_event LOGIN; sql "SELECT audit.sync()" >/dev/null; unsealed; }
wait_until "seal_interval 0 after reload: a stored batch is sealed with it" "0" 30 sealed_with_batch
log_event LOGIN; sql "SELECT audit.sync()" >/dev/null
check "seal_interval 0: nothing left unsealed after audit.sync()" "$(unsealed)" "0"
reload audit.seal_interval 200ms

# --- A transaction open across a restart of the worker is stored once it commits.
session_open a
session_run a "BEGIN; INSERT INTO leads VALUES (5001, 'Open', 0);" >/dev/null
check "the open transaction sees its own event, not numbered yet" \
  "$(session_run a "SELECT count(*) || ' ' || count(id) FROM audit.events WHERE entity_type = 'leads' AND entity_id = '5001';")" "1 0"
sql "INSERT INTO leads VALUES (5002, 'Other', 0)" >/dev/null
check "another session's commit is stored while the transaction is open" \
  "$(sql "SELECT audit.sync()")|$(sql "SELECT string_agg(entity_id, ',') FROM audit.events WHERE entity_type = 'leads' AND entity_id IN ('5001', '5002')")" "t|5002"
old_pid=$(worker_pid)
sql "SELECT pg_cancel_backend($old_pid)" >/dev/null   # an error: the worker exits with 1 and is restarted
wait_for "the worker restarts after an error (the server does not)" \
  "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'audit' AND pid <> $old_pid" "1" 30
check "the open transaction survived the worker's restart" "$(session_run a "SELECT count(*) FROM leads WHERE id = 5001;")" "1"
sql "INSERT INTO leads VALUES (5003, 'After', 0)" >/dev/null
check "the restarted worker does not store the open transaction's event" \
  "$(sql "SELECT audit.sync()")|$(sql "SELECT string_agg(entity_id, ',' ORDER BY id) FROM audit.events WHERE entity_type = 'leads' AND entity_id IN ('5001', '5002', '5003')")" "t|5002,5003"
session_run a "COMMIT;" >/dev/null
session_close a
check "once committed it is stored exactly once, after what committed before it" \
  "$(sql "SELECT audit.sync()")|$(sql "SELECT string_agg(entity_id, ',' ORDER BY id) FROM audit.events WHERE entity_type = 'leads' AND entity_id IN ('5001', '5002', '5003')")" "t|5002,5003,5001"

# --- A session keeps its committed events only until they are stored: its next
# commit forgets the stored ones, and it still sees each of its events once.
session_open b
session_run b "INSERT INTO leads VALUES (5101, 'Mine', 0); SELECT audit.sync();" >/dev/null
session_run b "INSERT INTO leads VALUES (5102, 'Mine', 0);" >/dev/null
check "after a commit that forgot the stored events, the session sees each of its events once" \
  "$(session_run b "SELECT count(*) || ' ' || count(DISTINCT entity_id) FROM audit.events WHERE entity_type = 'leads' AND entity_id IN ('5101', '5102');")" "2 2"
check "and once all are stored, with ids" \
  "$(session_run b "SELECT audit.sync(); SELECT count(*) || ' ' || count(id) FROM audit.events WHERE entity_type = 'leads' AND entity_id IN ('5101', '5102');" | tail -1)" "2 2"
session_close b

# --- Prepared transactions: stored after COMMIT PREPARED, dropped after ROLLBACK PREPARED.
sql "BEGIN; INSERT INTO leads VALUES (6001, 'Prepared', 0); PREPARE TRANSACTION 'p_commit'" >/dev/null
sql "BEGIN; INSERT INTO leads VALUES (6002, 'Prepared', 0); PREPARE TRANSACTION 'p_rollback'" >/dev/null
check "a prepared transaction's events are not stored" \
  "$(sql "SELECT audit.sync()")|$(sql "SELECT count(*) FROM audit.events WHERE entity_type = 'leads' AND entity_id IN ('6001', '6002')")" "t|0"
sql "COMMIT PREPARED 'p_commit'" >/dev/null; sql "ROLLBACK PREPARED 'p_rollback'" >/dev/null
check "COMMIT PREPARED stores them, ROLLBACK PREPARED drops them" \
  "$(sql "SELECT audit.sync()")|$(sql "SELECT string_agg(entity_id, ',') FROM audit.events WHERE entity_type = 'leads' AND entity_id IN ('6001', '6002')")" "t|6001"

# --- Crash safety: a burst of transactions (committed ones with a rolled-back
# savepoint, rolled-back ones), the worker or the server killed while it is
# being materialized. The committed rows of burst are the truth.
sql "CREATE TABLE burst (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, txn bigint NOT NULL, rolled boolean NOT NULL DEFAULT false)" >/dev/null
sql "CREATE SEQUENCE burst_txn" >/dev/null
sql "SELECT count(*) FROM audit.enable('burst')" >/dev/null
cat >"$dir/burst.sql" <<'EOF'
SELECT nextval('burst_txn') AS t \gset
BEGIN;
INSERT INTO burst (txn) SELECT :t FROM generate_series(1, 20);
SAVEPOINT s;
INSERT INTO burst (txn, rolled) SELECT :t, true FROM generate_series(1, 5);
ROLLBACK TO SAVEPOINT s;
SELECT audit.log_event('BURST_COMMIT', 'burst_txn', :t::text);
COMMIT;
BEGIN;
INSERT INTO burst (txn, rolled) SELECT -:t, true FROM generate_series(1, 10);
SELECT audit.log_event('BURST_ROLLBACK', 'burst_txn', :t::text);
ROLLBACK;
EOF
burst_start() { # four clients, 200 transactions a second in all, until the crash ends them (60 s at most)
  "$PG_BIN/pgbench" -n -c 4 -j 2 -R 200 -T 60 -f "$dir/burst.sql" -h "$dir" -p "$port" -U "$RUN_USER" crm >"$dir/burst.log" 2>&1 &
  burst_pid=$!
}
burst_stop() { wait "$burst_pid" 2>/dev/null || true; burst_pid=; }
stored_txns() { sql "SELECT count(*) FROM audit.events WHERE action = 'BURST_COMMIT'"; }
check_exactly_once() { # check_exactly_once WHEN
  local rows txns total
  rows=$(sql "SELECT count(*) FROM burst"); txns=$(sql "SELECT count(DISTINCT txn) FROM burst")
  check "$1: the burst committed transactions ($txns, $rows rows)" "$([ "$txns" -gt 0 ] && echo yes)" "yes"
  check "$1: every committed row change is stored exactly once" \
    "$(sql "SELECT count(*) || ' ' || count(DISTINCT entity_id) FROM audit.events WHERE entity_type = 'burst' AND action = 'INSERT'")" "$rows $rows"
  check "$1: the stored row changes are the committed rows" \
    "$(sql "SELECT count(*) FROM burst b FULL JOIN (SELECT entity_id::bigint AS id, (changes->'txn'->>'new')::bigint AS txn
                                                     FROM audit.events WHERE entity_type = 'burst') e USING (id)
             WHERE b.txn IS DISTINCT FROM e.txn")" "0"
  check "$1: every committed application event is stored exactly once" \
    "$(sql "SELECT count(*) FROM (SELECT DISTINCT txn::text AS t FROM burst) b
             FULL JOIN (SELECT entity_id AS t, count(*) n FROM audit.events WHERE action = 'BURST_COMMIT' GROUP BY 1) e USING (t)
            WHERE e.n IS DISTINCT FROM 1 OR b.t IS NULL")" "0"
  check "$1: no duplicate (entity, changes) among stored events" \
    "$(sql "SELECT count(*) FROM (SELECT FROM audit.events WHERE entity_type IN ('burst', 'burst_txn')
                                  GROUP BY action, entity_type, entity_id, changes HAVING count(*) > 1) d")" "0"
  check "$1: nothing rolled back (transaction, savepoint or crash) is stored" \
    "$(sql "SELECT count(*) FROM audit.events WHERE action = 'BURST_ROLLBACK' OR changes->'rolled'->>'new' = 'true'")" "0"
  total=$(sql "SELECT count(*) FROM audit.events")
  check "$1: ids are 1..N without gaps or repeats" \
    "$(sql "SELECT min(id) || '-' || max(id) || ' ' || count(DISTINCT id) FROM audit.events")" "1-$total $total"
  check "$1: each transaction's events have consecutive ids" \
    "$(sql "SELECT count(*) FROM (SELECT txid FROM audit.events GROUP BY txid HAVING max(id) - min(id) + 1 <> count(*)) t")" "0"
  check "$1: audit.seal() then verify(): valid, all sealed, every event checked" \
    "$(sql "SELECT audit.seal()")|$(sql "SELECT valid || ' ' || unsealed_events || ' ' || events_checked FROM audit.verify()")" "t|true 0 $total"
}

# kill -9 of the worker (the postmaster then restarts every process).
burst_start
wait_for "burst under way, the worker storing it" "SELECT count(*) > 20 FROM audit.events WHERE action = 'BURST_COMMIT'" "t" 60
check "audit.seal() during the burst" "$(sql "SELECT audit.seal(30000)")" "t"
digest=$(sql "SELECT audit.digest()")   # what an auditor keeps outside the database
pid=$(worker_pid); stored=$(stored_txns)
kill -9 "$pid"
echo "killed the worker (pid $pid) in the middle of the burst, $stored transactions stored"
burst_stop
check "the crash ended the burst's sessions" \
  "$(grep -c "aborted\|terminating connection because of crash\|server closed the connection" "$dir/burst.log" | sed 's/^[1-9][0-9]*$/some/')" "some"
wait_for "the worker restarts after the crash" "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'audit' AND pid <> $pid" "1" 60
wait_for "audit.sync() after the restart" "SELECT audit.sync()" "t" 60
check "worker killed: the digest taken just before the crash still verifies" \
  "$(sql "SELECT valid FROM audit.verify_digest('$digest')")" "t"
check_exactly_once "worker killed"

# An immediate stop of the whole server, with events stored but not sealed
# (the open block must come back from the table) and a prepared transaction.
reload audit.seal_interval 1h
sql "BEGIN; INSERT INTO leads VALUES (6003, 'Prepared', 0); PREPARE TRANSACTION 'p_crash'" >/dev/null
burst_start
before=$(stored_txns)
wait_for "second burst under way, the worker storing it" \
  "SELECT count(*) > $before + 20 FROM audit.events WHERE action = 'BURST_COMMIT'" "t" 60
check "audit.seal() during the burst" "$(sql "SELECT audit.seal(30000)")" "t"
digest=$(sql "SELECT audit.digest()")
wait_for "events stored since that seal are unsealed" "SELECT unsealed_events > 0 FROM audit.verify()" "t" 30
as_pg "$PG_BIN/pg_ctl" -D "$dir/data" -m immediate -w stop >/dev/null
echo "stopped the server (immediate) in the middle of the burst"
burst_stop
server_start
wait_for "audit.sync() after the server restart" "SELECT audit.sync()" "t" 60
check "the prepared transaction survived, its event not stored" \
  "$(sql "SELECT count(*) FROM pg_prepared_xacts WHERE gid = 'p_crash'")|$(sql "SELECT count(*) FROM audit.events WHERE entity_type = 'leads' AND entity_id = '6003'")" "1|0"
sql "COMMIT PREPARED 'p_crash'" >/dev/null
check "COMMIT PREPARED after the crash stores it once" \
  "$(sql "SELECT audit.sync()")|$(sql "SELECT count(*) FROM audit.events WHERE entity_type = 'leads' AND entity_id = '6003'")" "t|1"
check "server stopped: the digest taken before the crash still verifies" \
  "$(sql "SELECT valid FROM audit.verify_digest('$digest')")" "t"
check_exactly_once "server stopped"

# What audit.seal() reported sealed is durable, with no writer's commit
# flushing the WAL after it: a digest of it verifies after an immediate stop.
log_event LOGIN
check "audit.seal() with no writer around" "$(sql "SELECT audit.seal()")" "t"
digest=$(sql "SELECT audit.digest()")
as_pg "$PG_BIN/pg_ctl" -D "$dir/data" -m immediate -w stop >/dev/null
server_start
wait_for "audit.sync() after the server restart" "SELECT audit.sync()" "t" 60
check "the digest of the block audit.seal() reported verifies after the crash" \
  "$(sql "SELECT valid FROM audit.verify_digest('$digest')")" "t"
reload audit.seal_interval 200ms

# A slot's position is saved at checkpoints: after a crash it may be back where
# it was, never past where the worker resumes reading.
check "the slot survived the crashes, and keeps the WAL from where the worker resumes" \
  "$(sql "SELECT s.restart_lsn <= m.restart_lsn FROM pg_replication_slots s, audit.materializer_state m WHERE s.slot_name = '$slot'")" "t"

# --- Retention by the worker, its clock moved 7 years ahead: record changes and logins are archived.
record_changes=$(sql "SELECT count(*) FROM audit.events WHERE audit.action_category(action) = 'record_changes'")
logins=$(sql "SELECT count(*) FROM audit.events WHERE audit.action_category(action) = 'login'")
configs=$(sql "SELECT count(*) FROM audit.events WHERE audit.action_category(action) = 'config'")
check "the trail holds record changes, logins and config changes only" \
  "$(sql "SELECT count(*) FROM audit.events")" "$((record_changes + logins + configs))"
reload audit.retention_time_offset '7 years 1 day'
reload audit.retention_batch_size 500
# Cold storage: archive partitions go to the tablespace named by audit.archive_tablespace.
mkdir -p "$dir/cold" && { [ "$(id -u)" != 0 ] || chown "$RUN_USER" "$dir/cold"; }
sql "CREATE TABLESPACE audit_cold LOCATION '$dir/cold'" >/dev/null
reload audit.archive_tablespace audit_cold
# A retention run that fails is a WARNING too; the next run does the work.
pid=$(worker_pid)
sql "ALTER FUNCTION audit._retention_step(timestamptz, int, bigint) RENAME TO _retention_step_moved" >/dev/null
reload audit.retention_interval 1s
wait_for_log "a failed retention run is logged as a WARNING by the worker" \
  "\[$pid\] WARNING:  audit worker could not apply retention: function audit._retention_step("
check "nothing was archived or deleted, and the worker is the same process" \
  "$(sql "SELECT (SELECT count(*) FROM audit_archive.events) + (SELECT count(*) FROM audit.deletion_log)")|$(worker_pid)" "0|$pid"
sql "ALTER FUNCTION audit._retention_step_moved(timestamptz, int, bigint) RENAME TO _retention_step" >/dev/null
reload audit.retention_interval 1s
# Logins (kept 2 years) are past their archive grace too: deleted at once.
wait_for "the worker archives record changes, deletes expired logins, on its own" \
  "SELECT (SELECT count(*) FROM audit_archive.events) || ' ' || (SELECT coalesce(sum(event_count), 0) FROM audit.deletion_log)" \
  "$record_changes $logins" 120
check "archived events still verify" "$(sql "SELECT valid FROM audit.verify()")" "t"
check "archive partitions live in audit.archive_tablespace" \
  "$(sql "SELECT string_agg(DISTINCT coalesce(t.spcname, 'default'), ',') FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
          LEFT JOIN pg_tablespace t ON t.oid = c.reltablespace WHERE i.inhparent = 'audit_archive.event_chunks'::regclass")" "audit_cold"
wait_for_log "the worker logs its runs" "audit worker retention run"

# Deletion, killed with -9 in the middle: small batches make the run long.
reload audit.retention_batch_size 5
reload audit.retention_time_offset '7 years 5 months'
wait_for "deletion under way" "SELECT count(*) > 0 FROM audit.deletion_log" "t" 60
pid=$(worker_pid)
kill -9 "$pid"
echo "killed the worker (pid $pid) in the middle of a retention run"
wait_for "the worker restarts after the crash" \
  "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'audit' AND pid <> $pid" "1" 60
reload audit.retention_batch_size 1000
wait_for "the next run completes the deletion" "SELECT count(*) FROM audit_archive.events" "0" 180
check "nothing lost: every archived event is in the deletion log" \
  "$(sql "SELECT sum(event_count) FROM audit.deletion_log")" "$((record_changes + logins))"
check "nothing duplicated" "$(sql "SELECT count(*) = count(DISTINCT id) FROM (SELECT unnest(event_ids) AS id FROM audit.deletion_log) d")" "t"
check "only config events remain live" "$(sql "SELECT string_agg(DISTINCT action, ',') || ' ' || count(*) FROM audit.events")" "CONFIG_CHANGE $configs"
check "the chain verifies after deletion" "$(sql "SELECT valid FROM audit.verify()")" "t"
check "a run now has nothing to do" \
  "$(sql "SELECT coalesce(sum(archived + deleted), 0) FROM audit.run_retention(now() + interval '7 years 5 months')")" "0"
reload audit.retention_interval 0

# --- DROP EXTENSION: the worker drops the slot; CREATE EXTENSION starts a new trail.
sql "DROP EXTENSION audit CASCADE" >/dev/null 2>"$dir/drop.log"
wait_for "after DROP EXTENSION the worker drops the replication slot" \
  "SELECT count(*) FROM pg_replication_slots WHERE slot_name = '$slot'" "0" 30
# CREATE EXTENSION makes the slot at once; the worker, which drops the slot of a
# database without the extension (it polls every second), leaves it alone while
# that CREATE EXTENSION has not committed.
session_open create
session_run create "BEGIN; CREATE EXTENSION audit;" >/dev/null
sleep 3
check "CREATE EXTENSION again brings the slot back, kept while it has not committed" \
  "$(sql "SELECT count(*) FROM pg_replication_slots WHERE slot_name = '$slot'")" "1"
session_run create "COMMIT;" >/dev/null
session_close create
sql "SELECT count(*) FROM audit.enable('leads')" >/dev/null
sql "UPDATE leads SET status = 'Again' WHERE id = 1" >/dev/null
wait_for "the worker serves the new installation: a new trail numbered from 1" \
  "SELECT string_agg(id || ':' || action, ',' ORDER BY id) FROM audit.events" "1:CONFIG_CHANGE,2:UPDATE" 30
check "the new trail verifies" "$(sql "SELECT audit.seal()")|$(sql "SELECT valid || ' ' || unsealed_events FROM audit.verify()")" "t|true 0"

# --- SIGTERM: a clean exit (code 0: not restarted).
pid=$(worker_pid)
sql "SELECT pg_terminate_backend($pid)" >/dev/null
wait_for_log "SIGTERM: the worker logs its exit" "\[$pid\] LOG:  audit worker exiting"
wait_until "SIGTERM: the worker process ends" "gone" 30 bash -c "kill -0 $pid 2>/dev/null || echo gone"
check "SIGTERM: the worker exits with code 0 (no error, no crash)" \
  "$(grep -c "(PID $pid) exited with exit code\|(PID $pid) was terminated" "$dir/server.log" || true)" "0"
check "audit.status() reports the worker stopped" "$(sql "SELECT worker_running FROM audit.status()")" "f"
check "audit.sync() then raises 55000" \
  "$(psql -X -At -h "$dir" -p "$port" -U "$RUN_USER" -d crm -v VERBOSITY=verbose -c "SELECT audit.sync()" 2>&1 | grep -o '55000: the audit worker is not running')" \
  "55000: the audit worker is not running"

finish
