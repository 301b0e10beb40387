#!/bin/sh
# The streaming standby: on first start, a base backup of the primary (service `postgres`)
# with -R (standby.signal and primary_conninfo written for us); then a hot standby.
set -eu
if [ ! -s "${PGDATA}/PG_VERSION" ]; then
  until pg_isready -h postgres -p 5432 -U "${POSTGRES_USER}"; do sleep 1; done
  PGPASSWORD="${POSTGRES_PASSWORD}" pg_basebackup -h postgres -p 5432 -U "${POSTGRES_USER}" -D "${PGDATA}" -R -X stream
  chmod 0700 "${PGDATA}"
fi
exec postgres -c max_connections=100 -c hot_standby=on
