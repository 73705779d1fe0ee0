#!/usr/bin/env bash
# Validates openapi/asyncapi.yaml with the AsyncAPI Initiative's parser (@asyncapi/parser,
# pinned by package-lock.json; installed with npm ci when missing). Errors and warnings fail.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
if [ ! -d "$here/node_modules/@asyncapi/parser" ]; then
  (cd "$here" && npm ci --no-audit --no-fund --loglevel=error)
fi
node "$here/validate.mjs" "$root/openapi/asyncapi.yaml"
