#!/usr/bin/env bash
# Golden SQL tests (pg_regress) on a throwaway preloaded cluster.
set -euo pipefail
source "$(dirname "$0")/../../scripts/lib.sh"
golden_suite pg_regress /tmp/audit-regress 55433 "shared_preload_libraries = 'audit'" \
  "audit.database = 'audit_pg_regress'" "timezone = 'UTC'"
