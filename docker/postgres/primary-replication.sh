#!/bin/sh
# Runs once, when the primary's data folder is initialised (docker-entrypoint-initdb.d):
# lets the standby connect for streaming replication with the application's credentials.
set -eu
echo "host replication ${POSTGRES_USER} all scram-sha-256" >> "${PGDATA}/pg_hba.conf"
