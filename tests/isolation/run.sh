#!/usr/bin/env bash
# Concurrency tests (isolationtester) on a throwaway cluster.
set -euo pipefail
source "$(dirname "$0")/../../scripts/lib.sh"
golden_suite isolation /tmp/audit-isolation 55434 "shared_preload_libraries = 'audit'" \
  "audit.database = 'audit_isolation'" "timezone = 'UTC'"
