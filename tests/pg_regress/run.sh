#!/usr/bin/env bash
# Golden SQL tests: a throwaway cluster, then pg_regress over tests/pg_regress/sql.
# Set AUDIT_REGRESS_ACCEPT=1 to copy the actual output over the expected files.
set -euo pipefail
source "$(dirname "$0")/../../scripts/lib.sh"
here=$REPO_ROOT/tests/pg_regress
dir=/tmp/audit-regress; port=55433
cluster_start "$dir" "$port" "shared_preload_libraries = 'audit'" "timezone = 'UTC'"
trap 'cluster_stop "$dir"' EXIT
out=$dir/out; mkdir -p "$out"
tests=$(cd "$here/sql" && ls ./*.sql | sed 's|^\./||; s|\.sql$||' | sort)
status=0
/usr/lib/postgresql/15/lib/pgxs/src/test/regress/pg_regress \
  --inputdir="$here" --outputdir="$out" --bindir="$PG_BIN" \
  --host="$dir" --port="$port" --user="$RUN_USER" --dbname=audit_regress \
  $tests || status=$?
if [ "$status" != 0 ]; then
  [ -f "$out/regression.diffs" ] && head -200 "$out/regression.diffs"
  if [ "${AUDIT_REGRESS_ACCEPT:-0}" = 1 ]; then
    cp "$out"/results/*.out "$here/expected/"; echo "accepted new expected output"
  fi
fi
exit "$status"
