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
    # exactly the subcommands of `taiga-backup` (worker.cli.build_parser; tests/packaging compares them)
    -*|backup|restore|undo-restore|safety-backup|change-password|prune|check|verify|resume|status|jobs|fleet|snapshots|init|worker|alive|ping)
        set -- taiga-backup "$@"
        ;;
esac

exec "$@"
