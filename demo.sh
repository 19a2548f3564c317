#!/usr/bin/env bash
# Set up (first run only) and run opcancel locally against the simulator and the Pub/Sub emulator.
# Arguments: operation names to cancel (default: a sample that needs one delayed check).
set -euo pipefail
cd "$(dirname "$0")"
. devkit/setup-venv.sh
exec .venv/bin/python -m devkit.demo "$@"
