#!/usr/bin/env bash
# Reproduces the paper's Figure 1 (Sec. 4.1) into runs/: see scripts/reproduce_figure1.py, which this runs with
# the project's virtual environment when there is one. Extra flags go to both runs, e.g. --config.num_steps=5000.
set -euo pipefail
cd "$(dirname "$0")/.."
python=".venv/bin/python"
[ -x "$python" ] || python="python3"
exec "$python" scripts/reproduce_figure1.py "$@"
