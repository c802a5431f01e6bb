# Shared by the scripts: paths, the unprivileged cluster user, a throwaway cluster.
# shellcheck shell=bash
export PATH="$HOME/.cargo/bin:/usr/lib/postgresql/15/bin:$PATH"
REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# AUDIT_PG_BIN: run the test clusters from a copy of the PostgreSQL tree (its
# extension files included) instead of the system's, e.g. beside another checkout.
PG_BIN=${AUDIT_PG_BIN:-/usr/lib/postgresql/15/bin}
PG_CONFIG=/usr/lib/postgresql/15/bin/pg_config
RUN_USER=${AUDIT_RUN_USER:-audit_pg}

# as_pg CMD...: run a PostgreSQL server program as the unprivileged user when root.
as_pg() {
  if [ "$(id -u)" = 0 ]; then runuser -u "$RUN_USER" -- "$@"; else "$@"; fi
}

# cluster_start DIR PORT [extra postgresql.conf lines...]: a fresh cluster on a unix socket in DIR.
cluster_start() {
  local dir=$1 port=$2; shift 2
  cluster_stop "$dir"
  rm -rf "$dir"; mkdir -p "$dir"
  [ "$(id -u)" = 0 ] && chown "$RUN_USER" "$dir"
  as_pg "$PG_BIN/initdb" -D "$dir/data" -A trust -U "$RUN_USER" --encoding=UTF8 --locale=C.UTF-8 >"$dir/initdb.log" 2>&1 \
    || { cat "$dir/initdb.log"; return 1; }
  {
    echo "listen_addresses = ''"
    echo "unix_socket_directories = '$dir'"
    echo "port = $port"
    echo "fsync = ${AUDIT_FSYNC:-off}"
    echo "log_min_messages = warning"
    for line in "$@"; do echo "$line"; done
  } | as_pg tee -a "$dir/data/postgresql.conf" >/dev/null
  # Without RUST_BACKTRACE in the server's environment, errors keep their plain text.
  as_pg env -u RUST_BACKTRACE "$PG_BIN/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w start >/dev/null \
    || { cat "$dir/server.log"; return 1; }
}

cluster_stop() {
  local dir=$1
  [ -f "$dir/data/postmaster.pid" ] && as_pg "$PG_BIN/pg_ctl" -D "$dir/data" -m fast -w stop >/dev/null 2>&1
  return 0
}

# hold_audit_worker PSQL...: holds the audit worker back until release_audit_worker: a
# background session takes a lock the worker's state update waits for, and a few
# WORKER_HOLD events make it try. PSQL runs psql (-At) on the audited database with
# the arguments given appended. Sets AUDIT_HOLDER to the holding session's pid.
hold_audit_worker() {
  "$@" -c "BEGIN" -c "LOCK TABLE audit.materializer_state IN SHARE MODE" -c "SELECT pg_sleep(3600)" >/dev/null 2>&1 &
  AUDIT_HOLDER=$!
  local deadline=$((SECONDS + 60))
  until [ "$("$@" -c "SELECT count(*) FROM pg_locks WHERE relation = 'audit.materializer_state'::regclass AND NOT granted")" != 0 ]; do
    [ $SECONDS -lt "$deadline" ] || { echo "the audit worker did not wait for the held lock: is it running?" >&2; return 1; }
    "$@" -c "SELECT audit.log_event('WORKER_HOLD')" >/dev/null; sleep 0.2
  done
}

# release_audit_worker PSQL...: ends the session hold_audit_worker started.
release_audit_worker() {
  "$@" -c "SELECT pg_terminate_backend(pid) FROM pg_locks WHERE relation = 'audit.materializer_state'::regclass
             AND mode = 'ShareLock' AND granted" >/dev/null
  wait "$AUDIT_HOLDER" 2>/dev/null || true
  AUDIT_HOLDER=
}

# install_extension [--release]: build and install the extension into the system PostgreSQL 15.
install_extension() {
  (cd "$REPO_ROOT" && cargo pgrx install --pg-config "$PG_CONFIG" "$@" >/dev/null)
}

# golden_suite KIND DIR PORT [postgresql.conf lines...]: runs tests/KIND (sql/ + expected/
# for pg_regress, specs/ + expected/ for isolation) on a fresh cluster in DIR. Set
# AUDIT_REGRESS_ACCEPT=1 to copy the actual output over the expected files.
golden_suite() {
  local kind=$1 dir=$2 port=$3; shift 3
  local here=$REPO_ROOT/tests/$kind runner inputs ext status=0
  case $kind in
    pg_regress) runner=$PG_BIN/../lib/pgxs/src/test/regress/pg_regress; inputs=sql; ext=sql ;;
    isolation) runner=$PG_BIN/../lib/pgxs/src/test/isolation/pg_isolation_regress; inputs=specs; ext=spec ;;
  esac
  cluster_start "$dir" "$port" "$@" || return 1
  mkdir -p "$dir/out"
  "$runner" --inputdir="$here" --outputdir="$dir/out" --bindir="$PG_BIN" --host="$dir" --port="$port" \
    --user="$RUN_USER" --dbname="audit_$kind" $(cd "$here/$inputs" && ls ./*."$ext" | sed "s|^\./||; s|\.$ext\$||" | sort) || status=$?
  if [ "$status" != 0 ]; then
    [ -f "$dir/out/regression.diffs" ] && head -200 "$dir/out/regression.diffs"
    if [ "${AUDIT_REGRESS_ACCEPT:-0}" = 1 ]; then
      cp "$dir"/out/results/*.out "$here/expected/"; echo "accepted new expected output"
    fi
  fi
  cluster_stop "$dir"
  return "$status"
}
