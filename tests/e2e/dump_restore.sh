#!/usr/bin/env bash
# pg_dump keeps the trail: events, hashes, blocks, configuration and the id
# sequence survive a dump and restore, and capture and the guards still work.
set -euo pipefail
E2E_DIR=/tmp/audit-e2e-dump; E2E_PORT=55451
source "$(dirname "$0")/common.bash"
cluster_start "$E2E_DIR" "$E2E_PORT" "timezone = 'UTC'"
trap 'cluster_stop "$E2E_DIR"' EXIT

sql "CREATE DATABASE src"
export DB=src
sql "CREATE EXTENSION audit"
sql "CREATE TABLE deals (id int PRIMARY KEY, stage text, secret text)"
sql "SELECT count(*) FROM audit.enable('deals', mask_columns => ARRAY['secret'], entity_name => 'Deal')" >/dev/null
sql "INSERT INTO deals SELECT g, 'Lead', 's' FROM generate_series(1, 50) g"
sql "UPDATE deals SET stage = 'Won' WHERE id <= 10"
sql "DELETE FROM deals WHERE id = 50"
sql "SELECT audit.log_event('LOGIN')" >/dev/null
sql "SELECT count(*) FROM audit.seal()" >/dev/null
sql "SELECT audit.log_event('EXPORT')" >/dev/null   # stays unsealed
fingerprint="SELECT count(*) || ':' || max(id) || ':' || md5(string_agg(id || action || coalesce(changes::text, '') || encode(hash, 'hex'), ',' ORDER BY id)) FROM audit.events"
before=$(sql "$fingerprint")
blocks_before=$(sql "SELECT string_agg(encode(block_hash, 'hex'), ',' ORDER BY block_id) FROM audit.blocks")

"$PG_BIN/pg_dump" -Fc -h "$E2E_DIR" -p "$E2E_PORT" -U "$RUN_USER" -f "$E2E_DIR/src.dump" src
sql "CREATE DATABASE dst"
restore_log=$E2E_DIR/restore.log
"$PG_BIN/pg_restore" -h "$E2E_DIR" -p "$E2E_PORT" -U "$RUN_USER" -d dst "$E2E_DIR/src.dump" >"$restore_log" 2>&1 || true
check "pg_restore reports no errors" "$(grep -c 'error' "$restore_log" || true)" "0"
export DB=dst
check "events, changes and hashes are identical" "$(sql "$fingerprint")" "$before"
check "blocks are identical" "$(sql "SELECT string_agg(encode(block_hash, 'hex'), ',' ORDER BY block_id) FROM audit.blocks")" "$blocks_before"
check "tracking configuration is kept" "$(sql "SELECT entity_type || ' ' || masked_columns::text FROM audit.tracked_tables")" "Deal {secret}"
check "the restored chain verifies" "$(sql "SELECT valid || ' ' || unsealed_events FROM audit.verify()")" "true 1"
max_id=$(sql "SELECT max(id) FROM audit.events")
sql "UPDATE deals SET stage = 'Lost' WHERE id = 20"
check "capture works after restore, ids continue" \
  "$(sql "SELECT count(*) FROM audit.events WHERE id > $max_id AND action = 'UPDATE' AND entity_id = '20'")" "1"
check "the append-only guard is back" \
  "$(sql "DELETE FROM audit.events" 2>&1 | grep -c 'append-only' || true)" "1"
finish
