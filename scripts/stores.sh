#!/usr/bin/env bash
# scripts/stores.sh up|down|status - the real stores docledger needs, without Docker.
#   up      install what is missing (cached under $STORES_PREFIX), start, wait until each answers,
#           print one line per store and write $STORES_DATA/env (PG_URL, MYSQL_URL, MILVUS_URI, S3_*)
#   down    stop what `up` started (by pid file, never by name); STORES_PURGE=1 also deletes the data
#   status  print whether each store answers
# Defaults: the real engines, Embedded Milvus 2.3.5 (MILVUS_IMPL=embd) and Garage 2.5.0
# (S3_IMPL=garage); MILVUS_IMPL=lite / S3_IMPL=s3s-fs give a lighter local loop.
# PostgreSQL and MariaDB already running on 5432/3306 with passwordless default users are reused.
# Ports and directories: PG_PORT MYSQL_PORT MILVUS_PORT S3_PORT STORES_DATA STORES_PREFIX.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
export MILVUS_IMPL=${MILVUS_IMPL:-embd}
export S3_IMPL=${S3_IMPL:-garage}
export STORES_DATA=${STORES_DATA:-/tmp/stores-data}
export STORES_PREFIX=${STORES_PREFIX:-/opt/stores}

probe() { (exec 3<>"/dev/tcp/127.0.0.1/$2") 2>/dev/null && echo "$1 up (127.0.0.1:$2)" || { echo "$1 DOWN (127.0.0.1:$2)"; return 1; }; }

case "${1:-}" in
  up) exec "$here/stores/up.sh" ;;
  down) exec "$here/stores/down.sh" ;;
  status)
    rc=0
    probe postgres "${PG_PORT:-5432}" || rc=1
    probe mysql "${MYSQL_PORT:-3306}" || rc=1
    probe milvus "${MILVUS_PORT:-19530}" || rc=1
    probe s3 "${S3_PORT:-9000}" || rc=1
    exit $rc ;;
  *) echo "usage: $0 up|down|status" >&2; exit 2 ;;
esac
