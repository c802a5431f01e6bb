# Shared by the end-to-end scripts: psql against the script's cluster, checks with a count,
# waiting for a condition, and sessions kept open across several steps.
# shellcheck shell=bash
source "$(dirname "${BASH_SOURCE[0]}")/../../scripts/lib.sh"
# AUDIT_PG_BIN: the server programs of another PostgreSQL 15 installation (a relocated copy
# with its own lib/ and share/, say, that nothing reinstalls while the scripts run).
PG_BIN=${AUDIT_PG_BIN:-$PG_BIN}
checks=0
psql_args() { echo -X -At -v ON_ERROR_STOP=1 -h "${HOST_DIR:-$E2E_DIR}" -p "${PORT:-$E2E_PORT}" -U "$RUN_USER" -d "${DB:-postgres}"; }
# shellcheck disable=SC2046
sql() { psql $(psql_args) -c "$1"; }
# shellcheck disable=SC2046
psql_e2e() { psql $(psql_args) "$@"; } # psql with the script's connection and any arguments (hold_audit_worker, scripts on stdin)
server_log() { tail -30 "${HOST_DIR:-$E2E_DIR}/server.log"; }
check() { # check DESCRIPTION ACTUAL EXPECTED
  if [ "$2" != "$3" ]; then
    echo "FAIL: $1: got '$2', expected '$3'"
    server_log
    exit 1
  fi
  checks=$((checks + 1)); echo "ok: $1"
}
wait_for() { wait_until "$1" "$3" "${4:-60}" sql "$2"; } # wait_for DESCRIPTION QUERY EXPECTED [SECONDS]
wait_until() { # wait_until DESCRIPTION EXPECTED SECONDS COMMAND...: COMMAND's output, retried until EXPECTED
  local description=$1 expected=$2 deadline=$((SECONDS + $3)) got; shift 3
  while :; do
    got=$("$@" 2>/dev/null || true)
    if [ "$got" = "$expected" ] || [ $SECONDS -ge "$deadline" ]; then check "$description" "$got" "$expected"; return; fi
    sleep 0.2
  done
}
wait_for_log() { # wait_for_log DESCRIPTION PATTERN [SECONDS]: a line of the server log matching PATTERN
  local deadline=$((SECONDS + ${3:-30}))
  until grep -q -- "$2" "${HOST_DIR:-$E2E_DIR}/server.log"; do
    if [ $SECONDS -ge "$deadline" ]; then check "$1" "no log line" "a line matching '$2'"; fi
    sleep 0.2
  done
  check "$1" yes yes
}
finish() { echo "$checks passed, 0 failed"; }

# A session kept open across steps (an open transaction, a prepared one):
# session_open NAME starts psql reading from a pipe; session_run NAME SQL sends
# SQL and waits until psql has run it, and prints what it printed;
# session_close NAME ends it. The session's output is in $E2E_DIR/NAME.out.
declare -A session_fd session_pid
session_open() {
  local name=$1 fifo=$E2E_DIR/$1.fifo
  rm -f "$fifo"; mkfifo "$fifo"
  # shellcheck disable=SC2046
  psql -q $(psql_args) <"$fifo" >"$E2E_DIR/$name.out" 2>&1 &
  session_pid[$name]=$!
  exec {fd}>"$fifo"
  session_fd[$name]=$fd
}
session_run() { # session_run NAME SQL [SECONDS]
  # The step's marker is unique by itself: session_run often runs in a $(...)
  # subshell, where a counter kept in a variable would not advance.
  local name=$1 step out=$E2E_DIR/$1.out deadline=$((SECONDS + ${3:-30})) from
  step=$(date +%s%N)
  from=$(($(wc -l <"$out") + 1))
  printf '%s\n\\echo @@step %s@@\n' "$2" "$step" >&"${session_fd[$name]}"
  until grep -q "^@@step $step@@\$" "$out"; do
    if [ $SECONDS -ge "$deadline" ] || ! kill -0 "${session_pid[$name]}" 2>/dev/null; then
      echo "FAIL: session $name did not finish: $2"; cat "$out"; server_log; exit 1
    fi
    sleep 0.05
  done
  tail -n "+$from" "$out" | sed "/^@@step $step@@\$/,\$d"
}
session_close() {
  local name=$1 fd=${session_fd[$1]}
  exec {fd}>&-
  wait "${session_pid[$name]}" 2>/dev/null || true
  rm -f "$E2E_DIR/$name.fifo"
}
