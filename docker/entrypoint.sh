#!/bin/sh
# Entrypoint of the cnn-swarm images: `<image> controller|trainer|--help|...` runs `cnn-swarm ...`;
# `<image> python3 ...` (any program on PATH) runs that program.
#
# When TORCH_THREADS is not set and the container has a CPU limit (cgroup v2 cpu.max, or v1
# cpu.cfs_quota_us), torch gets that many threads (rounded up), split among the processes that
# share them: gunicorn workers for the controller, job slots for a trainer. Without a limit the
# CLI decides from the CPUs it sees. DATABASE_PASSWORD_FILE (a Docker secret) becomes PGPASSWORD.
set -eu

cpu_limit() {
    if [ -r /sys/fs/cgroup/cpu.max ]; then
        read -r quota period </sys/fs/cgroup/cpu.max || return 1
    elif [ -r /sys/fs/cgroup/cpu/cpu.cfs_quota_us ]; then
        read -r quota </sys/fs/cgroup/cpu/cpu.cfs_quota_us || return 1
        read -r period </sys/fs/cgroup/cpu/cpu.cfs_period_us || return 1
    else
        return 1
    fi
    case "$quota" in max | -1 | "") return 1 ;; esac
    echo $(((quota + period - 1) / period))
}

if [ -z "${TORCH_THREADS:-}" ] && limit=$(cpu_limit); then
    case "${1:-}" in
    trainer) sharers=${TRAINER_SLOTS:-1} ;;
    controller) sharers=${GUNICORN_WORKERS:-1} ;;
    *) sharers=1 ;;
    esac
    threads=$((limit / sharers))
    [ "$threads" -ge 1 ] || threads=1
    export TORCH_THREADS="$threads"
fi

# The PostgreSQL password as a Docker secret: libpq reads PGPASSWORD when DATABASE_URL has none.
if [ -n "${DATABASE_PASSWORD_FILE:-}" ] && [ -z "${PGPASSWORD:-}" ]; then
    PGPASSWORD=$(cat "$DATABASE_PASSWORD_FILE")
    export PGPASSWORD
fi

if [ $# -gt 0 ] && command -v "$1" >/dev/null 2>&1; then
    exec "$@"
fi
exec cnn-swarm "$@"
