#!/usr/bin/env bash
# Runs every test tier on a fresh machine: unit tests, #[pg_test]s, pg_regress
# golden files and end-to-end scripts. Installs what it needs first.
set -uo pipefail
source "$(dirname "$0")/lib.sh"
cd "$REPO_ROOT"
bash scripts/setup.sh || exit 1

passed=0; failed=0; failures=()
tier() {
  local name=$1; shift
  echo "=== $name"
  if "$@"; then passed=$((passed + 1)); else failed=$((failed + 1)); failures+=("$name"); fi
}

tier "unit tests (cargo test -p audit-core)" cargo test -p audit-core
PGRX_DATA=/tmp/audit-pgrx-tests
mkdir -p "$PGRX_DATA"; chown "$RUN_USER" "$PGRX_DATA" 2>/dev/null
chmod o+rx "$REPO_ROOT" 2>/dev/null
tier "in-database tests (cargo pgrx test)" cargo pgrx test pg15 --runas "$RUN_USER" --pgdata "$PGRX_DATA/data"
tier "install" install_extension
tier "pg_regress golden tests" bash tests/pg_regress/run.sh
tier "isolation tests" bash tests/isolation/run.sh
for script in tests/e2e/*.sh; do
  [ -e "$script" ] && tier "end-to-end: $(basename "$script" .sh)" bash "$script"
done

echo
echo "tiers: $passed passed, $failed failed"
for f in "${failures[@]}"; do echo "FAILED: $f"; done
[ "$failed" = 0 ]
