# scripts/env.sh - source after `scripts/stores.sh up`: points docledger (DOCLEDGER_*) at the
# stores that up.sh started, keeping any DOCLEDGER_* already set.
STORES_DATA=${STORES_DATA:-/tmp/stores-data}
# shellcheck disable=SC1091
. "$STORES_DATA/env"
pg_base=${PG_URL%/*}
mysql_base=${MYSQL_URL%/*}
export DOCLEDGER_EVENTSTORE_URL=${DOCLEDGER_EVENTSTORE_URL:-$pg_base/docledger}
export DOCLEDGER_MYSQL_URL=${DOCLEDGER_MYSQL_URL:-$mysql_base/docledger}
export DOCLEDGER_MILVUS_URL=${DOCLEDGER_MILVUS_URL:-$MILVUS_URI}
if [ -n "${MILVUS_TOKEN:-}" ] && [ -z "${DOCLEDGER_MILVUS_USER:-}" ]; then
  export DOCLEDGER_MILVUS_TOKEN=${DOCLEDGER_MILVUS_TOKEN:-$MILVUS_TOKEN}
fi
export DOCLEDGER_S3_ENDPOINT=${DOCLEDGER_S3_ENDPOINT:-$S3_ENDPOINT}
export DOCLEDGER_S3_ACCESS_KEY=${DOCLEDGER_S3_ACCESS_KEY:-$S3_ACCESS_KEY}
export DOCLEDGER_S3_SECRET_KEY=${DOCLEDGER_S3_SECRET_KEY:-$S3_SECRET_KEY}
export DOCLEDGER_S3_REGION=${DOCLEDGER_S3_REGION:-$S3_REGION}
