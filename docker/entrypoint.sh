#!/bin/sh
# Entrypoint of the cnn-swarm images: `<image> controller|trainer|--help|...` runs `cnn-swarm ...`;
# `<image> python3 ...` (any program on PATH) runs that program.
#
# Torch's thread count follows the container's CPU limit without help from here: the CLI reads
# the cgroup quota (v2 or v1) when TORCH_THREADS is not set (cnnswarm.serve.cpu_share).
# DATABASE_PASSWORD_FILE (a Docker secret) becomes PGPASSWORD.
set -eu

# The PostgreSQL password as a Docker secret: libpq reads PGPASSWORD when DATABASE_URL has none.
if [ -n "${DATABASE_PASSWORD_FILE:-}" ] && [ -z "${PGPASSWORD:-}" ]; then
    PGPASSWORD=$(cat "$DATABASE_PASSWORD_FILE")
    export PGPASSWORD
fi

if [ $# -gt 0 ] && command -v "$1" >/dev/null 2>&1; then
    exec "$@"
fi
exec cnn-swarm "$@"
