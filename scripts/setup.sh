#!/usr/bin/env bash
# Installs everything `audit` needs on a fresh Debian machine. Idempotent.
set -euo pipefail
export PATH="$HOME/.cargo/bin:$PATH"

PGRX_VERSION=0.18.0
PG_CONFIG=/usr/lib/postgresql/15/bin/pg_config
RUN_USER=${AUDIT_RUN_USER:-audit_pg}

need_pkgs=()
for p in postgresql-15 postgresql-server-dev-15 postgresql-contrib libclang-dev clang sudo; do
  dpkg -s "$p" >/dev/null 2>&1 || need_pkgs+=("$p")
done
if [ ${#need_pkgs[@]} -gt 0 ]; then
  echo "setup: installing ${need_pkgs[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_pkgs[@]}" >/dev/null
fi

if ! cargo pgrx --version 2>/dev/null | grep -q "$PGRX_VERSION"; then
  echo "setup: installing cargo-pgrx $PGRX_VERSION"
  cargo install --locked cargo-pgrx --version "$PGRX_VERSION"
fi

if ! grep -qs '^pg15' "$HOME/.pgrx/config.toml"; then
  cargo pgrx init --pg15 "$PG_CONFIG"
fi

if ! id -u "$RUN_USER" >/dev/null 2>&1; then
  useradd --system --create-home --shell /bin/bash "$RUN_USER"
fi
