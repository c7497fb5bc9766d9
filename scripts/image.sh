#!/usr/bin/env bash
# Builds the taiga-backup image with podman on a machine without a registry or a Docker engine (CI and
# the development machines), from docker/Dockerfile — the same file production builds use.
#
#   bash scripts/image.sh setup   # install podman/runc/debootstrap, write the podman config (idempotent)
#   bash scripts/image.sh base    # make localhost/debian:bookworm by debootstrap, once (cached)
#   bash scripts/image.sh build   # setup + base + build localhost/taiga-backup:ci (default)
#   bash scripts/image.sh env     # print the exports that make `podman` use this project's storage
# Environment: TAIGA_BACKUP_IMAGE (tag, default localhost/taiga-backup:ci), TAIGA_BACKUP_BUILD_CONTEXT
# (default: the repository), TAIGA_BACKUP_BUILD_LOG, TAIGA_BACKUP_PODMAN_DIR (storage and config).
#
# Why a script of its own: podman needs two settings this VM requires (root has no CAP_SYS_RESOURCE for
# the default ulimits; crun refuses the hybrid cgroups, runc works), its storage is kept in a work folder
# instead of /var/lib/containers, and no registry is reachable, so the base image is made locally.
set -euo pipefail
cd "$(dirname "$0")/.."

PODMAN_DIR=${TAIGA_BACKUP_PODMAN_DIR:-/var/tmp/taiga-backup-podman}
IMAGE=${TAIGA_BACKUP_IMAGE:-localhost/taiga-backup:ci}
BASE=localhost/debian:bookworm
CA_BUNDLE=${TAIGA_BACKUP_CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}
CONTEXT=${TAIGA_BACKUP_BUILD_CONTEXT:-.}
BUILD_LOG=${TAIGA_BACKUP_BUILD_LOG:-$PODMAN_DIR/build.log}
export CONTAINERS_CONF="$PODMAN_DIR/containers.conf"
export CONTAINERS_STORAGE_CONF="$PODMAN_DIR/storage.conf"

log() { echo "image.sh: $*" >&2; }

setup() {
  local need=()
  command -v podman >/dev/null || need+=(podman)
  command -v runc >/dev/null || need+=(runc)
  command -v debootstrap >/dev/null || need+=(debootstrap)
  if [ ${#need[@]} -gt 0 ]; then
    log "installing ${need[*]}"
    local SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
  fi
  mkdir -p "$PODMAN_DIR/storage" "$PODMAN_DIR/run"
  cat >"$CONTAINERS_CONF.tmp" <<EOF
# Written by scripts/image.sh.
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]

[engine]
runtime = "runc"
EOF
  mv "$CONTAINERS_CONF.tmp" "$CONTAINERS_CONF"
  cat >"$CONTAINERS_STORAGE_CONF.tmp" <<EOF
# Written by scripts/image.sh.
[storage]
driver = "overlay"
graphroot = "$PODMAN_DIR/storage"
runroot = "$PODMAN_DIR/run"
EOF
  mv "$CONTAINERS_STORAGE_CONF.tmp" "$CONTAINERS_STORAGE_CONF"
}

base() {
  if podman image exists "$BASE"; then
    return 0
  fi
  local root="$PODMAN_DIR/debootstrap"
  rm -rf "$root"
  log "making $BASE with debootstrap (about a minute, once)"
  debootstrap --variant=minbase bookworm "$root" >"$PODMAN_DIR/debootstrap.log" 2>&1 \
    || { tail -20 "$PODMAN_DIR/debootstrap.log" >&2; exit 1; }
  rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
  tar -C "$root" -c . | podman import --quiet - "$BASE" >/dev/null
  rm -rf "$root"
}

build() {
  setup
  base
  local started=$SECONDS
  # Debian's python3 (no registry here), restic as production gets it (the Dockerfile's default); the CA bundle of the
  # host's proxy is mounted for pip only during the build, never copied into a layer.
  podman build --network host --format docker \
    --build-arg BASE_IMAGE="$BASE" \
    --build-arg PYTHON_SOURCE=debian \
    --build-arg PG_SOURCE=debian \
    --volume "$CA_BUNDLE:/run/host-ca.crt:ro" \
    --build-arg PIP_CERT=/run/host-ca.crt \
    -f docker/Dockerfile -t "$IMAGE" "$CONTEXT" >"$BUILD_LOG" 2>&1 \
    || { tail -40 "$BUILD_LOG" >&2; exit 1; }
  log "built $IMAGE in $((SECONDS - started)) s, $(podman image inspect --format '{{.Size}}' "$IMAGE") bytes"
}

case "${1:-build}" in
  setup) setup ;;
  base) setup; base ;;
  build) build ;;
  env) echo "export CONTAINERS_CONF=$CONTAINERS_CONF CONTAINERS_STORAGE_CONF=$CONTAINERS_STORAGE_CONF" ;;
  *) echo "usage: $0 [setup|base|build|env]" >&2; exit 2 ;;
esac
