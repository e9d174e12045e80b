#!/usr/bin/env bash
# The first README command: install what is needed, then run the lab demo.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
exec node dist/src/cli/main.js demo "$@"
