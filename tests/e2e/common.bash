# Shared by the end-to-end scripts: psql against the script's cluster, checks with a count.
# shellcheck shell=bash
source "$(dirname "${BASH_SOURCE[0]}")/../../scripts/lib.sh"
checks=0
sql() { psql -X -At -v ON_ERROR_STOP=1 -h "$E2E_DIR" -p "$E2E_PORT" -U "$RUN_USER" -d "${DB:-postgres}" -c "$1"; }
check() { # check DESCRIPTION ACTUAL EXPECTED
  if [ "$2" != "$3" ]; then
    echo "FAIL: $1: got '$2', expected '$3'"
    tail -20 "$E2E_DIR/server.log"
    exit 1
  fi
  checks=$((checks + 1)); echo "ok: $1"
}
wait_for() { # wait_for DESCRIPTION QUERY EXPECTED [SECONDS]
  local deadline=$((SECONDS + ${4:-60})) got
  while :; do
    got=$(sql "$2" 2>/dev/null || true)
    if [ "$got" = "$3" ] || [ $SECONDS -ge "$deadline" ]; then check "$1" "$got" "$3"; return; fi
    sleep 0.2
  done
}
finish() { echo "$checks passed, 0 failed"; }
