#!/usr/bin/env bash
# The benchmark suite: audited vs unaudited throughput (pgbench, interleaved,
# medians of several rounds), storage and WAL per event, storing and sealing,
# verification, search and retention on the trail the run builds (millions of
# events). Writes benches/results.md.
#
#   bash benches/run.sh                      # full run (about 35 minutes on 2 cores)
#   AUDIT_BENCH_QUICK=1 bash benches/run.sh  # smoke run (about 6 minutes)
#
# Knobs: AUDIT_BENCH_SECONDS (per pgbench run), AUDIT_BENCH_ROUNDS, AUDIT_BENCH_EVENTS
# (events the bulk generator aims at), AUDIT_BENCH_SKIP_BUILD=1 (benchmark what is installed).
#
# Baseline and audited databases live in two clusters of their own (same
# settings; only the audited one preloads the extension), so that nothing of
# the extension runs during a baseline run. Runs alternate, never overlap.
# The audit worker stores events after their transactions commit: after each
# audited run the suite waits until it has stored everything (audit.sync())
# and merged the entity index's runs that are due (work the worker would
# otherwise do in the next baseline run), reports that wait, and the
# sustained ratio counts it as run time.
set -euo pipefail
source "$(dirname "$0")/../scripts/lib.sh"
here=$REPO_ROOT/benches
if [ "${AUDIT_BENCH_QUICK:-0}" = 1 ]; then
  seconds=${AUDIT_BENCH_SECONDS:-3}; rounds=${AUDIT_BENCH_ROUNDS:-3}; events=${AUDIT_BENCH_EVENTS:-200000}
else
  seconds=${AUDIT_BENCH_SECONDS:-6}; rounds=${AUDIT_BENCH_ROUNDS:-9}; events=${AUDIT_BENCH_EVENTS:-1000000}
fi
if [ "${AUDIT_BENCH_SKIP_BUILD:-0}" != 1 ]; then
  bash "$REPO_ROOT/scripts/setup.sh"
  echo "building and installing the extension (release)..."
  install_extension --release
fi

root=/tmp/audit-bench
export AUDIT_FSYNC=on   # durable commits are part of the workload
common=("synchronous_commit = on" "shared_buffers = '1GB'" "max_wal_size = '8GB'" "checkpoint_timeout = '30min'"
        "timezone = 'UTC'")
cluster_start "$root/baseline" 55461 "${common[@]}"
cluster_start "$root/audited" 55460 "${common[@]}" "shared_preload_libraries = 'audit'" \
  "audit.database = 'crm'" "audit.seal_interval = '1s'" "audit.retention_interval = 0"
trap 'cluster_stop "$root/baseline"; cluster_stop "$root/audited"' EXIT
declare -A port=([baseline]=55461 [audited]=55460)
psql_at() { local which=$1; shift; psql -X -At -q -v ON_ERROR_STOP=1 -h "$root/$which" -p "${port[$which]}" -U "$RUN_USER" -d crm "$@"; }
now_ms() { date +%s%3N; }

echo "== loading the CRM (100,000 opportunities, 100,000 contacts) into both clusters"
for which in baseline audited; do
  "$PG_BIN/createdb" -h "$root/$which" -p "${port[$which]}" -U "$RUN_USER" crm
  psql_at "$which" -f "$here/schema.sql" >/dev/null
done
psql_at audited -c "CREATE EXTENSION audit" \
  -c "SELECT count(*) FROM audit.enable('opportunities', exclude_columns => ARRAY['updated_at'])" \
  -c "SELECT count(*) FROM audit.enable('contacts', exclude_columns => ARRAY['updated_at'])" >/dev/null
for which in baseline audited; do psql_at "$which" -c "CHECKPOINT"; done

pgbench_run() { # pgbench_run CLUSTER SCRIPT CLIENTS SECONDS -> transactions processed
  "$PG_BIN/pgbench" -h "$root/$1" -p "${port[$1]}" -U "$RUN_USER" -n -M prepared -c "$3" -j "$3" -T "$4" \
    -f "$here/pgbench/$2.sql" crm 2>/dev/null | sed -n 's/^number of transactions actually processed: \([0-9]*\).*/\1/p'
}
settle_audited() { # settle_audited sync|seal: until the audited cluster's events are stored (or sealed) and the entity index's due runs merged
  psql_at audited -c "SELECT audit.$1(600000)" -c "SELECT audit._merge_entity_runs()" >/dev/null
}
drain_ms() { # how long storing what was committed and merging the entity index's runs takes (ms)
  local t0; t0=$(now_ms)
  settle_audited sync
  echo $(( $(now_ms) - t0 ))
}
median() { sort -g | awk '{a[NR]=$1} END {if (NR % 2) print a[(NR+1)/2]; else printf "%.1f\n", (a[NR/2]+a[NR/2+1])/2}'; }
rows=()
cell() { # cell LABEL SCRIPT CLIENTS TARGET
  # Ratios are taken per round (an audited run against the baseline run next
  # to it), then the median: slow drift of the machine cancels out. The order
  # flips every round (baseline first, then audited first), so that neither
  # side always runs after the other's background work (checkpoints, the
  # worker's tidying once storing pauses).
  local label=$1 script=$2 clients=$3 target=$4 b=() a=() d=() rr=() sr=() r nb na ratio sustained spread met
  for r in $(seq 1 "$rounds"); do
    if (( r % 2 )); then
      nb=$(pgbench_run baseline "$script" "$clients" "$seconds")
      na=$(pgbench_run audited "$script" "$clients" "$seconds"); d+=("$(drain_ms)")
    else
      na=$(pgbench_run audited "$script" "$clients" "$seconds"); d+=("$(drain_ms)")
      nb=$(pgbench_run baseline "$script" "$clients" "$seconds")
    fi
    b+=("$(awk -v n="$nb" -v t="$seconds" 'BEGIN {printf "%.1f", n / t}')")
    a+=("$(awk -v n="$na" -v t="$seconds" 'BEGIN {printf "%.1f", n / t}')")
    rr+=("$(awk -v a="${a[-1]}" -v b="${b[-1]}" 'BEGIN {printf "%.3f", a / b}')")
    sr+=("$(awk -v n="$na" -v t="$seconds" -v d="${d[-1]}" -v b="${b[-1]}" 'BEGIN {printf "%.3f", n / (t + d / 1000) / b}')")
  done
  local mb ma md
  mb=$(printf '%s\n' "${b[@]}" | median); ma=$(printf '%s\n' "${a[@]}" | median); md=$(printf '%s\n' "${d[@]}" | median)
  ratio=$(printf '%s\n' "${rr[@]}" | median | awk '{printf "%.2f", $1}')
  sustained=$(printf '%s\n' "${sr[@]}" | median | awk '{printf "%.2f", $1}')
  spread=$(printf '%s\n' "${sr[@]}" | sort -g | sed -n '1p;$p' | paste -sd- | sed 's/-/ – /')
  met=$(awk -v r="$sustained" -v t="$target" 'BEGIN {print (r >= t) ? "yes" : "no"}')
  rows+=("| $label | $clients | $mb | $ma | $ratio | $md | $sustained | $spread | ≥ $target | $met |")
  echo "   $label, $clients client(s): baseline $mb tps, audited $ma tps, ratio $ratio; worker done ${md} ms after the run: sustained $sustained (target $target: $met)"
}

echo "== throughput: ${rounds} rounds of ${seconds}s per cell, baseline and audited alternating (order flipped every round)"
for clients in 1 4; do
  cell "single-row UPDATE (stage, amount)" update "$clients" 0.90
  cell "single-row INSERT (contact)" insert "$clients" 0.90
  cell "mixed 70% update / 20% insert / 10% delete" mixed "$clients" 0.90
  cell "one UPDATE of 1,000 opportunities" bulk1000 "$clients" 0.60
done

echo "== storage and WAL per single-field UPDATE event"
sizes="SELECT coalesce(sum(pg_total_relation_size(inhrelid)), 0) FROM pg_inherits WHERE inhparent = 'audit.event_chunks'::regclass"
settled_run() { # settled_run CLUSTER SCRIPT TRANSACTIONS: pgbench/SCRIPT.sql at 1 client, then (audited) settled
  "$PG_BIN/pgbench" -h "$root/$1" -p "${port[$1]}" -U "$RUN_USER" -n -M prepared -c 1 -t "$3" \
    -f "$here/pgbench/$2.sql" crm >/dev/null 2>&1
  if [ "$1" = audited ]; then settle_audited seal; fi
}
# Both clusters vacuumed and checkpointed, then warmed up, so that neither
# measure includes the full-page images of first writes after a checkpoint;
# autovacuum stays off the updated table meanwhile (a run of it in one
# cluster's window would count its WAL as that cluster's).
for which in baseline audited; do
  psql_at "$which" -c "VACUUM opportunities" -c "ALTER TABLE opportunities SET (autovacuum_enabled = off)" -c "CHECKPOINT" >/dev/null
  settled_run "$which" update_stage 20000
done
size0=$(psql_at audited -c "$sizes"); blocks0=$(psql_at audited -c "SELECT pg_total_relation_size('audit.blocks')")
n0=$(psql_at audited -c "SELECT count(*) FROM audit.events")
wal_per() { # wal_per CLUSTER SCRIPT N [UNIT] -> WAL bytes (/ UNIT) per transaction of settled_run CLUSTER SCRIPT N, the worker's included
  local l0 l1
  l0=$(psql_at "$1" -c "SELECT pg_current_wal_lsn()")
  settled_run "$1" "$2" "$3"
  l1=$(psql_at "$1" -c "SELECT pg_current_wal_lsn()")
  psql_at "$1" -c "SELECT round(pg_wal_lsn_diff('$l1', '$l0') / $3 / ${4:-1})"
}
wal_base=$(wal_per baseline update_stage 20000); wal_audit=$(wal_per audited update_stage 20000)
size1=$(psql_at audited -c "$sizes"); blocks1=$(psql_at audited -c "SELECT pg_total_relation_size('audit.blocks')")
n1=$(psql_at audited -c "SELECT count(*) FROM audit.events")
bytes_per_event=$(( (size1 - size0) / (n1 - n0) ))
ledger_per_event=$(( (blocks1 - blocks0) / (n1 - n0) ))
events_per_row=$(psql_at audited -c "SELECT round(avg(event_count), 1) FROM (SELECT event_count FROM audit.event_chunks ORDER BY id DESC LIMIT 200) r")
# The same for a statement updating 1,000 rows. One pass over the whole table
# first, so that neither side counts first writes after the checkpoint.
for which in baseline audited; do
  psql_at "$which" >/dev/null <<'SQL'
SELECT format('UPDATE opportunities SET probability = (probability + 1) %% 100 WHERE id BETWEEN %s AND %s', g, g + 999)
  FROM generate_series(1, 100000, 1000) g \gexec
SQL
done
# The pass stored, sealed and its entity index runs merged,
# so that none of its work falls in the window.
settle_audited seal
bulk_wal_base=$(wal_per baseline bulk1000 500 1024); bulk_wal_audit=$(wal_per audited bulk1000 500 1024)
for which in baseline audited; do psql_at "$which" -c "ALTER TABLE opportunities RESET (autovacuum_enabled)" >/dev/null; done
echo "   $bytes_per_event bytes per event on disk (rows + indexes; $events_per_row events per stored row), ledger $ledger_per_event;" \
     "WAL per transaction: baseline $wal_base, audited $wal_audit (the worker's included);" \
     "per 1,000-row UPDATE: baseline $bulk_wal_base kB, audited $bulk_wal_audit kB"

generate_events() { # generate_events COUNT: bulk UPDATEs of 1,000 contacts by 200 actors, plus failed logins
  psql_at audited >/dev/null <<SQL
DO \$\$
BEGIN
  FOR b IN 1..$(( $1 / 1000 )) LOOP
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
# The worker is held back while a generator runs (hold_audit_worker), then let
# go: the generator's rate is capture's alone, and the time and CPU the worker
# then takes to store and seal everything are its own.
worker_cpu_ms() { # CPU time the audit worker has used (user + system), from /proc
  local pid; pid=$(psql_at audited -c "SELECT pid FROM pg_stat_activity WHERE backend_type = 'audit'")
  awk -v hz="$(getconf CLK_TCK)" '{print int(($14 + $15) * 1000 / hz)}' "/proc/$pid/stat"
}
release_worker() { # lets the worker go and waits until it has sealed everything: sets released_ms, released_cpu_ms
  local t0 c0
  c0=$(worker_cpu_ms)
  release_audit_worker psql_at audited
  t0=$(now_ms)
  psql_at audited -c "SELECT audit.seal(600000)" >/dev/null
  released_ms=$(( $(now_ms) - t0 )); released_cpu_ms=$(( $(worker_cpu_ms) - c0 ))
}

echo "== the worker storing single-row events: 100,000 single-row UPDATEs (4 clients) with the worker held, then let go"
single_tx=100000
hold_audit_worker psql_at audited
"$PG_BIN/pgbench" -h "$root/audited" -p "${port[audited]}" -U "$RUN_USER" -n -M prepared -c 4 -j 4 -t $((single_tx / 4)) \
  -f "$here/pgbench/update.sql" crm >/dev/null 2>&1
n_single_held=$(psql_at audited -c "SELECT count(*) FROM audit.events")
release_worker; single_ms=$released_ms; single_cpu_ms=$released_cpu_ms
single_stored=$(( $(psql_at audited -c "SELECT count(*) FROM audit.events") - n_single_held ))
single_rate=$(( single_stored * 1000 / (single_ms > 0 ? single_ms : 1) ))
single_cpu_us=$(awk -v c="$single_cpu_ms" -v n="$single_stored" 'BEGIN {printf "%.1f", c * 1000 / n}')
echo "   $single_stored events stored and sealed in ${single_ms} ms ($single_rate events/s), worker CPU $single_cpu_us µs per event"

echo "== generating events: $((events / 1000)) bulk UPDATEs of up to 1,000 contacts (rows the mixed runs deleted are gone) by 200 actors, logins"
hold_audit_worker psql_at audited
n_gen0=$(psql_at audited -c "SELECT count(*) FROM audit.events")
gen_start=$(now_ms)
generate_events "$events"
committed_ms=$(( $(now_ms) - gen_start ))
n_held=$(psql_at audited -c "SELECT count(*) FROM audit.events")   # stored before the hold (the held batch is not committed)
release_worker; stored_ms=$released_ms; store_cpu_ms=$released_cpu_ms
total=$(psql_at audited -c "SELECT count(*) FROM audit.events")
psql_at audited -c "VACUUM ANALYZE audit.event_chunks" >/dev/null
generated=$(( total - n_gen0 ))
commit_rate=$(( generated * 1000 / committed_ms ))
store_rate=$(( (total - n_held) * 1000 / (stored_ms > 0 ? stored_ms : 1) ))
store_cpu_us=$(awk -v c="$store_cpu_ms" -v n="$((total - n_held))" 'BEGIN {printf "%.1f", c * 1000 / n}')
echo "   $total events in the trail: $generated committed in $((committed_ms / 1000)) s ($commit_rate events/s) with the worker held;" \
     "then $((total - n_held)) stored and sealed by the worker in $((stored_ms / 1000)) s ($store_rate events/s, CPU $store_cpu_us µs per event)"

echo "== verifying"
t0=$(now_ms); verified=$(psql_at audited -c "SELECT events_checked || ' ' || valid FROM audit.verify()"); verify_ms=$(( $(now_ms) - t0 ))
verify_rate=$(( ${verified% *} * 1000 / (verify_ms > 0 ? verify_ms : 1) ))
echo "   verified $verified in ${verify_ms} ms ($verify_rate/s)"

echo "== search latency on $total events (one session, as an application's pooled connection: the first run, then the median of 20)"
search_rows=()
search_times() { # search_times QUERY -> "FIRST MEDIAN" in ms, as psql's \timing sees them
  { echo '\timing on'; for _ in $(seq 1 21); do echo "SELECT count(*) FROM audit.search(\$q\$$1\$q\$, 100);"; done; } \
    | psql_at audited | sed -n 's/^Time: \([0-9.]*\) ms.*/\1/p' > "$root/search_times"
  echo "$(head -n 1 "$root/search_times") $(tail -n +2 "$root/search_times" | median)"
}
for q in "user:sales.user42 action:UPDATE date:30d" "entity:contacts id:4242" "user:sales.user7 field:lifecycle_stage new_value:customer" \
         "action:LOGIN_FAILED date:today" "user:sales.user9 ip:203.0.9.0/24 source:API"; do
  read -r first ms <<<"$(search_times "$q")"
  search_rows+=("| \`$q\` | $ms | $first |")
  echo "   $q: median $ms ms (first run in the session $first ms)"
  [ "$q" = "user:sales.user42 action:UPDATE date:30d" ] && selective_ms=$ms
done

echo "== retention on the $total events, with a concurrent writer"
rm -f "$root"/writer.*   # an earlier run's writer log would count as this one's
"$PG_BIN/pgbench" -h "$root/audited" -p "${port[audited]}" -U "$RUN_USER" -n -M prepared -c 1 -T 900 -l \
  --log-prefix="$root/writer" -f "$here/pgbench/update.sql" crm >/dev/null 2>&1 &
writer=$!
sleep 2
t0=$(now_ms)
archived=$(psql_at audited -c "SELECT sum(archived) FROM audit.run_retention(now() + interval '7 years 1 day')")
archive_ms=$(( $(now_ms) - t0 ))
t0=$(now_ms)
deleted=$(psql_at audited -c "SELECT sum(deleted) FROM audit.run_retention(now() + interval '7 years 5 months')")
delete_ms=$(( $(now_ms) - t0 ))
sleep 1; kill "$writer" 2>/dev/null || true; wait "$writer" 2>/dev/null || true
# pgbench log: client tx latency(us) script_no epoch_s epoch_us
max_pause_ms=$(cat "$root"/writer.* 2>/dev/null | awk '$3 > max {max = $3} END {printf "%.1f", max / 1000}')
p99_ms=$(cat "$root"/writer.* 2>/dev/null | awk '{print $3}' | sort -n | awk '{a[NR]=$1} END {printf "%.1f", a[int(NR*0.99)] / 1000}')
archive_rate=$(( archived * 1000 / (archive_ms > 0 ? archive_ms : 1) ))
delete_rate=$(( deleted * 1000 / (delete_ms > 0 ? delete_ms : 1) ))
psql_at audited -c "SELECT audit.seal(600000)" >/dev/null
valid_after=$(psql_at audited -c "SELECT valid FROM audit.verify()")
echo "   archived $archived in ${archive_ms} ms ($archive_rate/s); deleted $deleted in ${delete_ms} ms ($delete_rate/s)"
echo "   concurrent writer: longest transaction ${max_pause_ms} ms, p99 ${p99_ms} ms; verify afterwards: $valid_after"

cpu=$(sed -n 's/^model name\s*: //p' /proc/cpuinfo | head -1)
mem=$(free -h | awk '/^Mem:/ {print $2}')
pgv=$(psql_at audited -c "SHOW server_version")
storage_met=$([ "$bytes_per_event" -le 300 ] && echo yes || echo no)
search_met=$(awk -v m="$selective_ms" 'BEGIN {print (m < 5) ? "yes" : "no"}')
{
  echo "# Benchmark results"
  echo
  echo "Produced by \`bash benches/run.sh\` on $(date -u '+%Y-%m-%d %H:%M UTC')."
  echo
  echo "Machine: $(nproc) cores ($cpu), $mem memory; PostgreSQL $pgv; fsync on, synchronous_commit on,"
  echo "shared_buffers 1GB. Baseline and audited databases in two clusters with the same settings (only the"
  echo "audited one preloads the extension, built in release mode); their runs alternate (baseline first in odd rounds, audited first in even ones), never overlap."
  echo "Each cell: ${rounds} rounds of ${seconds} s per cluster; tps are medians, ratios the median of the per-round ratios."
  echo
  echo "## Throughput (pgbench -M prepared)"
  echo
  echo "The audit worker stores events after their transactions commit. After each audited run the suite"
  echo "waits for it to store everything (\`audit.sync()\`) and to merge the entity index's runs that are due"
  echo "(\`audit._merge_entity_runs()\`); *sustained* counts that wait as run time"
  echo "(transactions / (run + wait)), and the target applies to it."
  echo
  echo "| workload | clients | baseline tps | audited tps | ratio | worker done after run (ms) | sustained ratio | rounds' sustained ratios, min–max | target | met? |"
  echo "|---|---|---|---|---|---|---|---|---|---|"
  printf '%s\n' "${rows[@]}"
  echo
  echo "## Storage and WAL"
  echo
  echo "| measure | value | target | met? |"
  echo "|---|---|---|---|"
  echo "| bytes on disk per single-field UPDATE event (rows + indexes of audit.event_chunks) | $bytes_per_event | ≤ 300 | $storage_met |"
  echo "| events per stored row (the last 200 rows) | $events_per_row | | |"
  echo "| ledger bytes per event (audit.blocks) | $ledger_per_event | | |"
  echo "| WAL per single-field UPDATE transaction, baseline | $wal_base | | |"
  echo "| WAL per single-field UPDATE transaction, audited (the worker's included) | $wal_audit | | |"
  echo "| WAL per 1,000-row UPDATE statement, baseline (kB) | $bulk_wal_base | | |"
  echo "| WAL per 1,000-row UPDATE statement, audited (the worker's included, kB) | $bulk_wal_audit | | |"
  echo
  echo "## The trail at $total events"
  echo
  echo "| measure | value |"
  echo "|---|---|"
  echo "| events committed per second by the generator, bulk statements of 1,000 rows (worker held back) | $commit_rate |"
  echo "| events stored and sealed per second by the worker on its own (released after the generator) | $store_rate |"
  echo "| worker CPU per bulk-statement event | $store_cpu_us µs |"
  echo "| single-row UPDATE events stored and sealed per second by the worker on its own (100,000 held, then released) | $single_rate |"
  echo "| worker CPU per single-row UPDATE event | $single_cpu_us µs |"
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
  echo "## Retention on $total events"
  echo
  echo "| measure | value |"
  echo "|---|---|"
  echo "| events archived per second (\`audit.run_retention\`, one transaction) | $archive_rate ($archived in ${archive_ms} ms) |"
  echo "| events deleted per second (whole expired archive partitions dropped) | $delete_rate ($deleted in ${delete_ms} ms) |"
  echo "| longest transaction of a concurrent single-row UPDATE writer during both runs | ${max_pause_ms} ms (p99 ${p99_ms} ms) |"
  echo "| \`audit.verify()\` afterwards | $valid_after |"
} > "$here/results.md"
echo "== wrote benches/results.md"
