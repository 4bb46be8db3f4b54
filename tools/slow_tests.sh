#!/usr/bin/env bash
# The tests marked slow, kept out of the default suite (which must stay under 25 minutes on
# 2 cores): run from the repository root in its virtual environment.
set -euo pipefail
cd "$(dirname "$0")/.."
exec python -m pytest -q -m slow "$@"
