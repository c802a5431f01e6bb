#!/usr/bin/env bash
# Concurrency tests (isolationtester): a throwaway cluster, then pg_isolation_regress.
set -euo pipefail
source "$(dirname "$0")/../../scripts/lib.sh"
here=$REPO_ROOT/tests/isolation
dir=/tmp/audit-isolation; port=55434
cluster_start "$dir" "$port" "timezone = 'UTC'"
trap 'cluster_stop "$dir"' EXIT
out=$dir/out; mkdir -p "$out"
specs=$(cd "$here/specs" && ls ./*.spec | sed 's|^\./||; s|\.spec$||' | sort)
status=0
/usr/lib/postgresql/15/lib/pgxs/src/test/isolation/pg_isolation_regress \
  --inputdir="$here" --outputdir="$out" --bindir="$PG_BIN" \
  --host="$dir" --port="$port" --user="$RUN_USER" --dbname=audit_isolation \
  $specs || status=$?
if [ "$status" != 0 ]; then
  [ -f "$out/regression.diffs" ] && head -100 "$out/regression.diffs"
  if [ "${AUDIT_REGRESS_ACCEPT:-0}" = 1 ]; then
    cp "$out"/results/*.out "$here/expected/"; echo "accepted new expected output"
  fi
fi
exit "$status"
