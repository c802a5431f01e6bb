#!/usr/bin/env bash
# Golden SQL tests (pg_regress) on a throwaway preloaded cluster.
# The worker seals only when asked (audit.seal()) and runs no retention of its
# own, so that blocks and the trail are the same on every run.
set -euo pipefail
source "$(dirname "$0")/../../scripts/lib.sh"
golden_suite pg_regress /tmp/audit-regress 55433 "shared_preload_libraries = 'audit'" \
  "audit.database = 'audit_pg_regress'" "timezone = 'UTC'" \
  "audit.seal_interval = '1h'" "audit.retention_interval = 0"
