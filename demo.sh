#!/usr/bin/env bash
# Set up (first run only) and run opcancel locally against the simulator and the Pub/Sub emulator.
# Arguments: operation names to cancel (default: a sample that needs one delayed check);
# or --serve: keep the local stack up and print the environment for the CLI, gcloud and curl
# (docs/development.md, "The local stack").
set -euo pipefail
cd "$(dirname "$0")"
. devkit/setup-venv.sh
if [ "${1:-}" = "--serve" ]; then
  shift
  exec .venv/bin/python -m devkit.local_stack "$@"
fi
exec .venv/bin/python -m devkit.demo "$@"
