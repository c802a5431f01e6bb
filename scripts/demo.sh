#!/usr/bin/env bash
# Builds and installs the extension, starts a throwaway cluster, loads a small
# CRM, makes a day of changes from several actors and sources, prints the
# trail, and tells how to connect. Installs what it needs first.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$REPO_ROOT"
if [ "${AUDIT_DEMO_SKIP_BUILD:-0}" != 1 ]; then
  bash scripts/setup.sh
  echo "building and installing the extension (release)..."
  install_extension --release
fi
dir=/tmp/audit-demo; port=55440
cluster_start "$dir" "$port" "shared_preload_libraries = 'audit'" "audit.database = 'crm'" "timezone = 'UTC'"
"$PG_BIN/createdb" -h "$dir" -p "$port" -U "$RUN_USER" crm
run_sql() { psql -X -q -v ON_ERROR_STOP=1 -h "$dir" -p "$port" -U "$RUN_USER" -d crm "$@"; }
run_sql -f demo/crm_schema.sql >/dev/null
run_sql -f demo/day_of_changes.sql >/dev/null
run_sql -f demo/show_trail.sql

stop="$PG_BIN/pg_ctl -D $dir/data stop"
[ "$(id -u)" = 0 ] && stop="runuser -u $RUN_USER -- $stop"
cat <<MSG

The demo cluster is running (PostgreSQL 15, audit preloaded: the background worker seals every second).
Connect:   psql -h $dir -p $port -U $RUN_USER crm
Try:       SELECT * FROM audit.search('source:AI');
           SELECT * FROM audit.history('Lead', 'lead_2');
           SELECT audit.stats();
           SELECT * FROM audit.revert((SELECT max(id) FROM audit.events WHERE actor = 'bob@acme.test' AND action = 'UPDATE'), 'stage');
Stop:      $stop
MSG
