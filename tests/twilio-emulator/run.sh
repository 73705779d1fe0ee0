#!/usr/bin/env bash
# Installs the pinned dependencies (package-lock.json) and runs the conformance test that
# drives Twilio's Conversations JS SDK against the emulator. Needs Node 20+ and npm registry
# access. Exits non-zero if any case fails.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
npm ci --no-audit --no-fund --loglevel=error >/dev/null
exec node --test
