#!/usr/bin/env bash
# Set up (first run only) and run every test tier. Arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")"
. devkit/setup-venv.sh
exec .venv/bin/python -m pytest "$@"
