#!/usr/bin/env bash
# Fetches the restic the image ships (Debian's `restic` package of the suite and version that
# docker/Dockerfile names, ARG RESTIC_DEBIAN_SUITE / RESTIC_DEBIAN_VERSION: written once, there) for
# this machine, so the test suite runs against it as well as against the system's restic 0.14.
#
#   bash scripts/restic.sh bin   # prints the directory holding that restic (fetched once, cached)
#
# Like the image build, it uses a sources list of its own and never touches the system's apt state;
# apt verifies the package against Debian's signed archive. Cache: /var/tmp/taiga-backup-restic.
set -euo pipefail
cd "$(dirname "$0")/.."

arg() { sed -n "s/^ARG $1=//p" docker/Dockerfile | head -1; }
SUITE=$(arg RESTIC_DEBIAN_SUITE)
VERSION=$(arg RESTIC_DEBIAN_VERSION)
[ -n "$SUITE" ] && [ -n "$VERSION" ] || { echo "restic.sh: no RESTIC_DEBIAN_* in docker/Dockerfile" >&2; exit 1; }
CACHE=${TAIGA_BACKUP_RESTIC_CACHE:-/var/tmp/taiga-backup-restic}
DIR="$CACHE/$VERSION"

fetch() {
  local apt="$CACHE/apt-$SUITE" work
  mkdir -p "$apt/lists/partial" "$apt/cache/archives/partial"
  echo "deb http://deb.debian.org/debian $SUITE main" > "$apt/sources.list"
  local opts=(-o "Dir::Etc::sourcelist=$apt/sources.list" -o Dir::Etc::sourceparts=/dev/null
              -o "Dir::State::Lists=$apt/lists" -o "Dir::Cache=$apt/cache")
  echo "restic.sh: fetching restic $VERSION from Debian $SUITE" >&2
  apt-get "${opts[@]}" update -qq
  work=$(mktemp -d)
  (cd "$work" && apt-get "${opts[@]}" download -qq "restic=$VERSION" && dpkg-deb -x restic_*.deb x)
  mkdir -p "$DIR.tmp"
  install -m 0755 "$work/x/usr/bin/restic" "$DIR.tmp/restic"
  rm -rf "$work"
  "$DIR.tmp/restic" version >&2
  rm -rf "$DIR" && mv "$DIR.tmp" "$DIR"
}

case "${1:-bin}" in
  bin) [ -x "$DIR/restic" ] || fetch; echo "$DIR" ;;
  *) echo "usage: $0 bin" >&2; exit 2 ;;
esac
