#!/usr/bin/env bash
# The benchmark suite: audited vs unaudited throughput (pgbench, interleaved,
# medians of several rounds), storage and WAL per event, sealing, verification,
# search and retention on 1M events. Writes benches/results.md.
#
#   bash benches/run.sh                      # full run (about 20 minutes on 2 cores)
#   AUDIT_BENCH_QUICK=1 bash benches/run.sh  # smoke run (about 4 minutes)
#
# Knobs: AUDIT_BENCH_SECONDS (per pgbench run), AUDIT_BENCH_ROUNDS, AUDIT_BENCH_EVENTS
# (events for the 1M phase), AUDIT_BENCH_SKIP_BUILD=1 (benchmark what is installed).
set -euo pipefail
source "$(dirname "$0")/../scripts/lib.sh"
here=$REPO_ROOT/benches
if [ "${AUDIT_BENCH_QUICK:-0}" = 1 ]; then
  seconds=${AUDIT_BENCH_SECONDS:-3}; rounds=${AUDIT_BENCH_ROUNDS:-1}; events=${AUDIT_BENCH_EVENTS:-200000}
else
  seconds=${AUDIT_BENCH_SECONDS:-8}; rounds=${AUDIT_BENCH_ROUNDS:-3}; events=${AUDIT_BENCH_EVENTS:-1000000}
fi
if [ "${AUDIT_BENCH_SKIP_BUILD:-0}" != 1 ]; then
  bash "$REPO_ROOT/scripts/setup.sh"
  echo "building and installing the extension (release)..."
  install_extension --release
fi

dir=/tmp/audit-bench; port=55460
export AUDIT_FSYNC=on   # durable commits are part of the workload
cluster_start "$dir" "$port" "shared_preload_libraries = 'audit'" "audit.database = 'audited'" \
  "synchronous_commit = on" "shared_buffers = '1GB'" "max_wal_size = '8GB'" "checkpoint_timeout = '30min'" \
  "audit.seal_interval = '1s'" "audit.retention_interval = 0" "timezone = 'UTC'"
trap 'cluster_stop "$dir"' EXIT
psql_db() { local db=$1; shift; psql -X -At -q -v ON_ERROR_STOP=1 -h "$dir" -p "$port" -U "$RUN_USER" -d "$db" "$@"; }
now_ms() { date +%s%3N; }

echo "== loading the CRM (100,000 opportunities, 100,000 contacts) into baseline and audited"
for db in baseline audited; do
  "$PG_BIN/createdb" -h "$dir" -p "$port" -U "$RUN_USER" "$db"
  psql_db "$db" -f "$here/schema.sql" >/dev/null
done
psql_db audited -c "CREATE EXTENSION audit" \
  -c "SELECT count(*) FROM audit.enable('opportunities', exclude_columns => ARRAY['updated_at'])" \
  -c "SELECT count(*) FROM audit.enable('contacts', exclude_columns => ARRAY['updated_at'])" >/dev/null

tps() { # tps DB SCRIPT CLIENTS -> tps
  "$PG_BIN/pgbench" -h "$dir" -p "$port" -U "$RUN_USER" -n -M prepared -c "$3" -j "$3" -T "$seconds" \
    -f "$here/pgbench/$2.sql" "$1" 2>/dev/null | sed -n 's/^tps = \([0-9.]*\) .*without.*/\1/p'
}
median() { sort -g | awk '{a[NR]=$1} END {if (NR % 2) print a[(NR+1)/2]; else printf "%.1f\n", (a[NR/2]+a[NR/2+1])/2}'; }
rows=()
cell() { # cell LABEL SCRIPT CLIENTS TARGET
  local label=$1 script=$2 clients=$3 target=$4 b=() a=() r mb ma ratio met
  for r in $(seq 1 "$rounds"); do
    b+=("$(tps baseline "$script" "$clients")")
    a+=("$(tps audited "$script" "$clients")")
  done
  mb=$(printf '%s\n' "${b[@]}" | median); ma=$(printf '%s\n' "${a[@]}" | median)
  ratio=$(awk -v a="$ma" -v b="$mb" 'BEGIN {printf "%.2f", a / b}')
  met=$(awk -v r="$ratio" -v t="$target" 'BEGIN {print (r >= t) ? "yes" : "no"}')
  rows+=("| $label | $clients | $mb | $ma | $ratio | ≥ $target | $met |")
  echo "   $label, $clients client(s): baseline $mb tps, audited $ma tps, ratio $ratio (target $target: $met)"
}

echo "== throughput: ${rounds} round(s) of ${seconds}s per cell, baseline and audited interleaved, sealing on"
for clients in 1 4; do
  cell "single-row UPDATE (stage, amount)" update "$clients" 0.90
  cell "single-row INSERT (contact)" insert "$clients" 0.90
  cell "mixed 70% update / 20% insert / 10% delete" mixed "$clients" 0.90
  cell "one UPDATE of 1,000 opportunities" bulk1000 "$clients" 0.60
done
psql_db audited -c "ALTER SYSTEM SET audit.seal_interval = 0" -c "SELECT pg_reload_conf()" >/dev/null
sleep 1
cell "single-row UPDATE, sealing off" update 4 0.90
sealing_off_row=${rows[-1]}
psql_db audited -c "ALTER SYSTEM SET audit.seal_interval = '1s'" -c "SELECT pg_reload_conf()" >/dev/null

echo "== storage and WAL per single-field UPDATE event"
events_size="SELECT coalesce(sum(pg_total_relation_size(inhrelid)), 0) FROM pg_inherits WHERE inhparent = 'audit.events'::regclass"
psql_db audited -c "CHECKPOINT" >/dev/null
size0=$(psql_db audited -c "$events_size"); n0=$(psql_db audited -c "SELECT count(*) FROM audit.events")
wal_per_tx() { # wal_per_tx DB -> bytes of WAL per single-field update transaction
  local l0 l1
  l0=$(psql_db "$1" -c "SELECT pg_current_wal_lsn()")
  "$PG_BIN/pgbench" -h "$dir" -p "$port" -U "$RUN_USER" -n -M prepared -c 1 -t 20000 -f "$here/pgbench/update_stage.sql" "$1" >/dev/null 2>&1
  l1=$(psql_db "$1" -c "SELECT pg_current_wal_lsn()")
  psql_db "$1" -c "SELECT round(pg_wal_lsn_diff('$l1', '$l0') / 20000)"
}
wal_base=$(wal_per_tx baseline); wal_audit=$(wal_per_tx audited)
size1=$(psql_db audited -c "$events_size"); n1=$(psql_db audited -c "SELECT count(*) FROM audit.events")
bytes_per_event=$(( (size1 - size0) / (n1 - n0) ))
heap_per_event=$(psql_db audited -c "SELECT round(avg(pg_column_size(e.*))) FROM (SELECT * FROM audit.events ORDER BY id DESC LIMIT 20000) e")
echo "   $bytes_per_event bytes per event on disk (table + indexes; row alone $heap_per_event); WAL per transaction: baseline $wal_base, audited $wal_audit"

echo "== generating $events events (200 actors, bulk statements of 1,000 rows, logins)"
psql_db audited -c "ALTER SYSTEM SET audit.seal_interval = 0" -c "SELECT pg_reload_conf()" >/dev/null
psql_db audited -c "SELECT count(*) FROM audit.seal()" >/dev/null
generate_events() { # generate_events DB COUNT: bulk UPDATEs of 1,000 contacts by 200 actors, plus failed logins
  psql_db "$1" >/dev/null <<SQL
DO \$\$
BEGIN
  FOR b IN 1..$(( $2 / 1000 )) LOOP
    PERFORM audit.set_context(actor => 'sales.user' || (b % 200), source => (ARRAY['UI','API','AUTOMATION','IMPORT'])[1 + b % 4],
                              ip => ('203.0.' || (b % 256) || '.' || (b % 200 + 1))::inet, is_local => true);
    UPDATE contacts SET lifecycle_stage = (ARRAY['lead','mql','sql','customer'])[1 + (b + id) % 4], title = 'T' || b
    WHERE id BETWEEN 1 + (b * 1000) % 99000 AND 1000 + (b * 1000) % 99000;
    IF b % 100 = 0 THEN
      PERFORM audit.log_event('LOGIN_FAILED', 'User', 'sales.user' || (b % 200), '{"reason": "bad password"}');
    END IF;
    COMMIT;
  END LOOP;
END
\$\$;
SQL
}
gen_start=$(now_ms)
generate_events audited "$events"
gen_ms=$(( $(now_ms) - gen_start ))
total=$(psql_db audited -c "SELECT count(*) FROM audit.events")
psql_db audited -c "VACUUM ANALYZE audit.events" >/dev/null
echo "   $total events in the trail (generated in $((gen_ms / 1000)) s: $(( (total - n1) * 1000 / gen_ms )) events/s)"

echo "== sealing and verifying"
t0=$(now_ms); sealed=$(psql_db audited -c "SELECT coalesce(sum(event_count), 0) FROM audit.seal()"); seal_ms=$(( $(now_ms) - t0 ))
t0=$(now_ms); verified=$(psql_db audited -c "SELECT events_checked || ' ' || valid FROM audit.verify()"); verify_ms=$(( $(now_ms) - t0 ))
seal_rate=$(( sealed * 1000 / (seal_ms > 0 ? seal_ms : 1) ))
verify_rate=$(( ${verified% *} * 1000 / (verify_ms > 0 ? verify_ms : 1) ))
echo "   sealed $sealed events in ${seal_ms} ms ($seal_rate/s); verified $verified in ${verify_ms} ms ($verify_rate/s)"

echo "== search latency on $total events (one session, as an application's pooled connection: the first run, then the median of 20)"
search_rows=()
search_times() { # search_times QUERY -> "FIRST MEDIAN" in ms, as psql's \timing sees them
  { echo '\timing on'; for _ in $(seq 1 21); do echo "SELECT count(*) FROM audit.search(\$q\$$1\$q\$, 100);"; done; } \
    | psql_db audited | sed -n 's/^Time: \([0-9.]*\) ms.*/\1/p' > "$dir/search_times"
  echo "$(head -n 1 "$dir/search_times") $(tail -n +2 "$dir/search_times" | median)"
}
for q in "user:sales.user42 action:UPDATE date:30d" "entity:contacts id:4242" "user:sales.user7 field:lifecycle_stage new_value:customer" \
         "action:LOGIN_FAILED date:today" "user:sales.user9 ip:203.0.9.0/24 source:API"; do
  read -r first ms <<<"$(search_times "$q")"
  search_rows+=("| \`$q\` | $ms | $first |")
  echo "   $q: median $ms ms (first run in the session $first ms)"
  [ "$q" = "user:sales.user42 action:UPDATE date:30d" ] && selective_ms=$ms
done

echo "== retention on $events events (a database of its own), with a concurrent writer"
"$PG_BIN/createdb" -h "$dir" -p "$port" -U "$RUN_USER" retention
psql_db retention -f "$here/schema.sql" >/dev/null
psql_db retention -c "CREATE EXTENSION audit" \
  -c "SELECT count(*) FROM audit.enable('opportunities', exclude_columns => ARRAY['updated_at'])" \
  -c "SELECT count(*) FROM audit.enable('contacts', exclude_columns => ARRAY['updated_at'])" >/dev/null
generate_events retention "$events"
retention_total=$(psql_db retention -c "SELECT count(*) FROM audit.events")
psql_db retention -c "SELECT count(*) FROM audit.seal()" -c "VACUUM ANALYZE audit.events" >/dev/null
"$PG_BIN/pgbench" -h "$dir" -p "$port" -U "$RUN_USER" -n -M prepared -c 1 -T 900 -l --log-prefix="$dir/writer" \
  -f "$here/pgbench/update.sql" retention >/dev/null 2>&1 &
writer=$!
sleep 2
t0=$(now_ms)
archived=$(psql_db retention -c "SELECT sum(archived) FROM audit.run_retention(now() + interval '7 years 1 day')")
archive_ms=$(( $(now_ms) - t0 ))
t0=$(now_ms)
deleted=$(psql_db retention -c "SELECT sum(deleted) FROM audit.run_retention(now() + interval '7 years 5 months')")
delete_ms=$(( $(now_ms) - t0 ))
sleep 1; kill "$writer" 2>/dev/null || true; wait "$writer" 2>/dev/null || true
# pgbench log: client tx latency(us) script_no epoch_s epoch_us
max_pause_ms=$(cat "$dir"/writer.* 2>/dev/null | awk '$3 > max {max = $3} END {printf "%.1f", max / 1000}')
p99_ms=$(cat "$dir"/writer.* 2>/dev/null | awk '{print $3}' | sort -n | awk '{a[NR]=$1} END {printf "%.1f", a[int(NR*0.99)] / 1000}')
archive_rate=$(( archived * 1000 / (archive_ms > 0 ? archive_ms : 1) ))
delete_rate=$(( deleted * 1000 / (delete_ms > 0 ? delete_ms : 1) ))
valid_after=$(psql_db retention -c "SELECT valid FROM audit.verify()")
echo "   archived $archived of $retention_total in ${archive_ms} ms ($archive_rate/s); deleted $deleted in ${delete_ms} ms ($delete_rate/s)"
echo "   concurrent writer: longest transaction ${max_pause_ms} ms, p99 ${p99_ms} ms; verify afterwards: $valid_after"

cpu=$(sed -n 's/^model name\s*: //p' /proc/cpuinfo | head -1)
mem=$(free -h | awk '/^Mem:/ {print $2}')
pgv=$(psql_db audited -c "SHOW server_version")
storage_met=$([ "$bytes_per_event" -le 300 ] && echo yes || echo no)
search_met=$(awk -v m="$selective_ms" 'BEGIN {print (m < 5) ? "yes" : "no"}')
{
  echo "# Benchmark results"
  echo
  echo "Produced by \`bash benches/run.sh\` on $(date -u '+%Y-%m-%d %H:%M UTC')."
  echo
  echo "Machine: $(nproc) cores ($cpu), $mem memory; PostgreSQL $pgv; fsync on, synchronous_commit on,"
  echo "shared_buffers 1GB; the extension built in release mode and preloaded (worker sealing every 1 s)."
  echo "Each cell: ${rounds} round(s) of ${seconds} s per database, baseline and audited interleaved; medians."
  echo
  echo "## Throughput (pgbench -M prepared)"
  echo
  echo "| workload | clients | baseline tps | audited tps | ratio | target | met? |"
  echo "|---|---|---|---|---|---|---|"
  printf '%s\n' "${rows[@]}"
  echo
  echo "## Storage and WAL"
  echo
  echo "| measure | value | target | met? |"
  echo "|---|---|---|---|"
  echo "| bytes on disk per single-field UPDATE event (table + indexes) | $bytes_per_event | ≤ 300 | $storage_met |"
  echo "| bytes per event row (pg_column_size) | $heap_per_event | | |"
  echo "| WAL per single-field UPDATE transaction, baseline | $wal_base | | |"
  echo "| WAL per single-field UPDATE transaction, audited | $wal_audit | | |"
  echo
  echo "## Ledger on $total events"
  echo
  echo "| measure | value |"
  echo "|---|---|"
  echo "| events generated per second (bulk statements of 1,000 rows) | $(( (total - n1) * 1000 / gen_ms )) |"
  echo "| events sealed per second (\`audit.seal()\`) | $seal_rate |"
  echo "| events verified per second (\`audit.verify()\`) | $verify_rate |"
  echo
  echo "## Search on $total events (\`audit.search(q, 100)\` in one session, psql \\timing)"
  echo
  echo "| query | median ms | first run in the session, ms |"
  echo "|---|---|---|"
  printf '%s\n' "${search_rows[@]}"
  echo
  echo "Selective search target (< 5 ms): ${selective_ms} ms, met: $search_met."
  echo
  echo "## Retention on $retention_total events"
  echo
  echo "| measure | value |"
  echo "|---|---|"
  echo "| events archived per second (\`audit.run_retention\`, one transaction) | $archive_rate ($archived in ${archive_ms} ms) |"
  echo "| events deleted per second (whole expired archive partitions dropped) | $delete_rate ($deleted in ${delete_ms} ms) |"
  echo "| longest transaction of a concurrent single-row UPDATE writer during both runs | ${max_pause_ms} ms (p99 ${p99_ms} ms) |"
  echo "| \`audit.verify()\` afterwards | $valid_after |"
} > "$here/results.md"
echo "== wrote benches/results.md"
