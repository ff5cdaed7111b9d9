#!/bin/sh
# First start: create the cluster with superuser `cnnswarm` (password from POSTGRES_PASSWORD_FILE)
# and database `cnnswarm`, password authentication for every network client. Then run postgres.
set -eu
: "${PGDATA:=/var/lib/postgresql/data}"
if [ ! -s "$PGDATA/PG_VERSION" ]; then
    if [ -z "${POSTGRES_PASSWORD_FILE:-}" ] || [ ! -s "$POSTGRES_PASSWORD_FILE" ]; then
        echo "postgres-entrypoint: set POSTGRES_PASSWORD_FILE to a non-empty file" >&2
        exit 2
    fi
    initdb -D "$PGDATA" -U cnnswarm --pwfile="$POSTGRES_PASSWORD_FILE" \
        --auth-local=trust --auth-host=scram-sha-256 --encoding=UTF8 --locale=C.UTF-8 >/dev/null
    echo "host all all all scram-sha-256" >>"$PGDATA/pg_hba.conf"
    echo "CREATE DATABASE cnnswarm OWNER cnnswarm" | postgres --single -D "$PGDATA" postgres >/dev/null
fi
exec postgres -D "$PGDATA" -c listen_addresses='*' -c unix_socket_directories=/var/run/postgresql
