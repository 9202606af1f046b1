#!/usr/bin/env bash
# PostgreSQL's server programs (initdb, pg_ctl, postgres) for the stack tests: found on PATH or
# in Debian's /usr/lib/postgresql/*/bin, else installed from the distribution's packages.
set -euo pipefail
if command -v initdb >/dev/null 2>&1 || compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null; then
    exit 0
fi
echo "PostgreSQL not found: installing it (the stack tests need initdb and pg_ctl)" >&2
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q postgresql
elif command -v sudo >/dev/null && command -v apt-get >/dev/null; then
    sudo apt-get update -q && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -q postgresql
else
    echo "error: install PostgreSQL 15 or newer (initdb and pg_ctl on PATH)" >&2
    exit 1
fi
