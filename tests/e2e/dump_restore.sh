#!/usr/bin/env bash
# pg_dump keeps the trail: the stored events (ids, changes, the hashes
# audit.events computes), the blocks of the chain and the configuration
# survive pg_dump and pg_restore into a fresh database of another cluster
# whose audit.database is the restored database. There the worker takes the
# restored trail up: capture works, new events are numbered right after the
# restored ones and sealed onto the restored chain, and the guards are back.
# audit.materializer_state is not dumped: the restored database has its own.
set -euo pipefail
E2E_DIR=/tmp/audit-e2e-dump; E2E_PORT=55451
source "$(dirname "$0")/common.bash"
src=$E2E_DIR/src; src_port=$E2E_PORT
dst=$E2E_DIR/dst; dst_port=55455
cluster_stop "$src"; cluster_stop "$dst"; rm -rf "$E2E_DIR"; mkdir -p "$E2E_DIR"
cluster_start "$src" "$src_port" "shared_preload_libraries = 'audit'" "audit.database = 'src'" \
  "audit.seal_interval = '1h'" "timezone = 'UTC'"
cluster_start "$dst" "$dst_port" "shared_preload_libraries = 'audit'" "audit.database = 'dst'" "timezone = 'UTC'"
cleanup() { cluster_stop "$src"; cluster_stop "$dst"; }
trap cleanup EXIT

# The source cluster's trail: ids 1-2 config changes, 3-52 inserts, 53-62 updates, 63 a delete,
# 64 a login (sealed), 65 an export (stored, not sealed).
export HOST_DIR=$src PORT=$src_port
sql "CREATE DATABASE src" >/dev/null
export DB=src
sql "CREATE EXTENSION audit" >/dev/null
wait_for "source: the worker serves src" "SELECT worker_running AND capture_ready FROM audit.status()" "t"
sql "CREATE TABLE deals (id int PRIMARY KEY, stage text, secret text)" >/dev/null
sql "SELECT count(*) FROM audit.enable('deals', mask_columns => ARRAY['secret'], entity_name => 'Deal')" >/dev/null
sql "SELECT count(*) FROM audit.set_retention('login', '3 years')" >/dev/null
sql "INSERT INTO deals SELECT g, 'Lead', 's' FROM generate_series(1, 50) g" >/dev/null
sql "UPDATE deals SET stage = 'Won' WHERE id <= 10" >/dev/null
sql "DELETE FROM deals WHERE id = 50" >/dev/null
sql "SELECT audit.log_event('LOGIN')" >/dev/null
check "source: audit.seal()" "$(sql "SELECT audit.seal()")" "t"
sql "SELECT audit.log_event('EXPORT')" >/dev/null   # stored, not sealed (seal_interval 1h)
check "source: the EXPORT is stored" "$(sql "SELECT audit.sync()")" "t"
check "source: ids 1..65, the last one unsealed" \
  "$(sql "SELECT min(id) || '-' || max(id) || ' ' || count(*) FROM audit.events")|$(sql "SELECT valid || ' ' || unsealed_events FROM audit.verify()")" \
  "1-65 65|true 1"
fingerprint="SELECT count(*) || ':' || max(id) || ':' || md5(string_agg(id || action || coalesce(entity_id, '') || coalesce(changes::text, '')
                     || coalesce(statement_id::text, '') || coalesce(block_id::text, '') || encode(hash, 'hex'), ',' ORDER BY id))
             FROM audit.events WHERE id <= 65"   # the source's trail: the restored events among later ones
blocks="SELECT string_agg(block_id || ':' || first_event_id || '-' || last_event_id || ':' || lsn_lo || '-' || lsn_hi || ':'
                          || encode(block_hash, 'hex') || ':' || encode(prev_hash, 'hex') || ':' || md5(leaf_hashes), ',' ORDER BY block_id)
        FROM audit.blocks"
config="SELECT (SELECT string_agg(entity_type || ' ' || masked_columns::text, ',') FROM audit.tracked_tables) || ' '
               || (SELECT string_agg(category || '=' || keep, ',' ORDER BY category) FROM audit.retention_policies WHERE keep_months IS DISTINCT FROM NULL)"
before=$(sql "$fingerprint"); blocks_before=$(sql "$blocks"); config_before=$(sql "$config")

"$PG_BIN/pg_dump" -Fc -h "$src" -p "$src_port" -U "$RUN_USER" -f "$E2E_DIR/src.dump" src
check "the dump holds the trail, the chain, the entity index and the configuration" \
  "$("$PG_BIN/pg_restore" -l "$E2E_DIR/src.dump" | grep -o 'TABLE DATA audit [a-z_0-9]*' | sed 's/^TABLE DATA audit //; s/_[0-9]\{6\}$/_YYYYMM/' | sort -u | tr '\n' ' ')" \
  "blocks deletion_log entity_run_rows entity_runs event_chunks_YYYYMM retention_settings saved_filter_store tracked "
check "audit.materializer_state is not dumped" \
  "$("$PG_BIN/pg_restore" -l "$E2E_DIR/src.dump" | grep -c 'materializer_state' || true)" "0"

# Restored into a fresh database, the one the other cluster's worker serves.
export HOST_DIR=$dst PORT=$dst_port DB=postgres
sql "CREATE DATABASE dst" >/dev/null
# The worker connects to dst before the restore starts: it sees CREATE EXTENSION
# while pg_restore is still loading the trail.
wait_for "the worker waits in the new database for the extension" \
  "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'audit' AND datname = 'dst'" "1" 30
restore_log=$E2E_DIR/restore.log
"$PG_BIN/pg_restore" -h "$dst" -p "$dst_port" -U "$RUN_USER" -d dst "$E2E_DIR/src.dump" >"$restore_log" 2>&1 || true
check "pg_restore reports no errors" "$(grep -ci 'error' "$restore_log" || true)" "0"
export DB=dst
check "events, ids, changes and hashes are identical" "$(sql "$fingerprint")" "$before"
check "blocks are identical" "$(sql "$blocks")" "$blocks_before"
check "tracking configuration and retention settings are kept" "$(sql "$config")" "$config_before"
check "a bulk statement's events are found by record through the restored entity index" \
  "$(sql "SELECT string_agg(id::text, ',' ORDER BY id) FROM audit._record_events(ARRAY['Deal'], '7')")" "9,59"
check "the restored chain verifies, the restored unsealed event still unsealed" \
  "$(sql "SELECT valid || ' ' || unsealed_events || ' ' || events_checked FROM audit.verify()")" "true 1 65"
wait_for "the worker serves the restored database" \
  "SELECT worker_running || ' ' || capture_ready FROM audit.status()" "true true" 30
check "the restored database has a materializer state of its own" \
  "$(sql "SELECT count(*) FROM audit.materializer_state WHERE restart_lsn > '0/0'")" "1"

sql "UPDATE deals SET stage = 'Lost', secret = 't' WHERE id = 20" >/dev/null
sql "SELECT audit.log_event('LOGIN')" >/dev/null
check "capture works after restore" "$(sql "SELECT audit.sync()")" "t"
check "new events are numbered right after the restored ones" \
  "$(sql "SELECT string_agg(id || ':' || action || ':' || coalesce(entity_id, '-'), ',' ORDER BY id) FROM audit.events WHERE id > 63")" \
  "64:LOGIN:-,65:EXPORT:-,66:UPDATE:20,67:LOGIN:-"
check "no id is used twice" "$(sql "SELECT count(*) - count(DISTINCT id) FROM audit.events")" "0"
check "the restored events are unchanged by the new ones" \
  "$(sql "$fingerprint")" "$before"
check "audit.seal() on the restored chain" "$(sql "SELECT audit.seal()")" "t"
check "the new block seals the restored unsealed event and the new ones, linked to the restored chain" \
  "$(sql "SELECT first_event_id || '-' || last_event_id || ' ' || (prev_hash = (SELECT block_hash FROM audit.blocks p WHERE p.block_id = b.block_id - 1))
            FROM audit.blocks b ORDER BY block_id DESC LIMIT 1")" "65-67 true"
check "the whole chain verifies" "$(sql "SELECT valid || ' ' || unsealed_events || ' ' || events_checked FROM audit.verify()")" "true 0 67"
check "the masked column stays masked in the new event" \
  "$(sql "SELECT changes::text FROM audit.events WHERE id = 66")" '{"stage": {"new": "Lost", "old": "Lead"}, "secret": {"masked": true}}'
check "the worker stored the restored database's events without an error" \
  "$(grep -c 'ERROR' "$dst/server.log" || true)" "0"
check "the append-only guard is back" \
  "$(sql "DELETE FROM audit.event_chunks" 2>&1 | grep -c 'append-only' || true)" "1"
finish
