#!/usr/bin/env bash
# The demo: builds and installs the extension, starts a throwaway PostgreSQL 15
# cluster with audit preloaded, loads a small CRM, plays a day of changes from
# several actors and sources, prints the trail and tells how to connect.
# The cluster is left running; re-running the demo starts it afresh.
#
#   bash scripts/demo.sh                           # full run (installs what it needs first)
#   AUDIT_DEMO_SKIP_BUILD=1 bash scripts/demo.sh   # reuse the installed extension
set -euo pipefail
source "$(dirname "$0")/lib.sh"

DEMO_DIR=/tmp/audit-demo
DEMO_PORT=55440
DEMO_DB=crm

if [ "${AUDIT_DEMO_SKIP_BUILD:-0}" != 1 ]; then
  echo "demo: installing prerequisites (scripts/setup.sh)..."
  bash "$REPO_ROOT/scripts/setup.sh"
  echo "demo: building and installing the extension (release; the first build takes a few minutes)..."
  install_extension --release
fi

echo "demo: starting a throwaway cluster in $DEMO_DIR (port $DEMO_PORT)..."
# audit.database: the database whose trail the background worker stores (in commit
# order, from the WAL) and seals into the hash chain every second.
cluster_start "$DEMO_DIR" "$DEMO_PORT" \
  "shared_preload_libraries = 'audit'" \
  "audit.database = '$DEMO_DB'" \
  "timezone = 'UTC'"

"$PG_BIN/createdb" -h "$DEMO_DIR" -p "$DEMO_PORT" -U "$RUN_USER" "$DEMO_DB"

demo_psql() {
  "$PG_BIN/psql" -X -v ON_ERROR_STOP=1 -h "$DEMO_DIR" -p "$DEMO_PORT" -U "$RUN_USER" -d "$DEMO_DB" "$@"
}

demo_psql -q -c 'CREATE EXTENSION audit'
echo "demo: loading the CRM schema (demo/crm_schema.sql)..."
demo_psql -q -f "$REPO_ROOT/demo/crm_schema.sql"
echo "demo: playing a day of changes (demo/day_of_changes.sql)..."
demo_psql -q -f "$REPO_ROOT/demo/day_of_changes.sql" >/dev/null
echo "demo: the trail (demo/show_trail.sql):"; echo
demo_psql -f "$REPO_ROOT/demo/show_trail.sql"

connect="psql -h $DEMO_DIR -p $DEMO_PORT -U $RUN_USER -d $DEMO_DB"
stop="$PG_BIN/pg_ctl -D $DEMO_DIR/data stop"
[ "$(id -u)" = 0 ] && stop="runuser -u $RUN_USER -- $stop"

cat <<MSG

The demo cluster is still running (PostgreSQL 15, audit preloaded; its background
worker stores committed events within milliseconds and seals them into the hash
chain every second; a session always sees its own events at once).

Connect:
  $connect

Queries to try:
  SELECT * FROM audit.history('Opportunity', 'opp_2');
  SELECT id, action, entity_type, entity_id, source FROM audit.user_activity('bob@acme.test');
  SELECT event_id, actor, field, old_value, new_value FROM audit.field_changes WHERE entity_type = 'Lead' AND action = 'UPDATE';
  SELECT id, actor, action, entity_id FROM audit.search('source:AI');
  SELECT * FROM audit.status();
  SELECT * FROM audit.verify();
  -- make a change of your own, then look for it:
  BEGIN; SELECT audit.set_context(actor => 'you@acme.test', source => 'UI');
  UPDATE opportunities SET amount = 60000 WHERE id = 'opp_1'; COMMIT;
  SELECT * FROM audit.history('Opportunity', 'opp_1', 'amount');

Stop it:
  $stop
MSG
