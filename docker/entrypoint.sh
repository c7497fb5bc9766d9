#!/bin/sh
# Container entrypoint (run under tini). Lets `docker run IMAGE backup --wait` stand for
# `taiga-backup backup --wait`; any other command (celery ..., sh, restic ...) runs as given. With no
# arguments it starts the worker with the embedded beat. Settings come from the environment; the
# worker reads secrets from the *_FILE paths itself, so nothing is exported here.
set -eu

if [ "$#" -eq 0 ]; then
    set -- taiga-backup worker --beat
fi

case "$1" in
    -*|worker|backup|restore|snapshots|status|init|change-password|prune|check|verify|ping)
        set -- taiga-backup "$@"
        ;;
esac

exec "$@"
