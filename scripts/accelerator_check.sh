#!/usr/bin/env bash
# The accelerator check (see scripts/accelerator_check.py), with the project's virtual environment when there is
# one: bash scripts/accelerator_check.sh [--dry_run]. Without a GPU or TPU it is a dry run.
set -euo pipefail
cd "$(dirname "$0")/.."
python=".venv/bin/python"
[ -x "$python" ] || python="python3"
exec "$python" scripts/accelerator_check.py "$@"
