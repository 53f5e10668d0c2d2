#!/usr/bin/env bash
# Reproduces the paper's Figure 1 (Sec. 4.1): the MNIST MLP with and without BN, 50k steps each, then the
# figure. With two or more CPU cores the two runs train at once, each pinned to its own core (a net this
# small runs fastest on one core). Re-running resumes unfinished runs. Extra flags go to both runs, e.g.
# `bash scripts/reproduce_figure1.sh --config.num_steps=5000`; RUNS_DIR (default runs) says where to write.
set -euo pipefail
cd "$(dirname "$0")/.."
python=".venv/bin/python"
[ -x "$python" ] || python="python3"
runs="${RUNS_DIR:-runs}"
mkdir -p "$runs"
read -r -a cores <<< "$("$python" -c 'import os; print(*sorted(os.sched_getaffinity(0)))')"
start=$(date +%s)

train() {  # variant, core: one run, its console lines prefixed with the variant
  local pin=()
  [ -n "$2" ] && pin=(taskset -c "$2")
  "${pin[@]}" "$python" -m bnrepro.main --config="configs/mnist_mlp.py:$1" --workdir="$runs/mnist_$1" "${@:3}" \
    2>&1 | sed -u "s/^/[$1] /"
}

if [ "${#cores[@]}" -ge 2 ] && command -v taskset > /dev/null; then
  train baseline "${cores[0]}" "$@" &
  baseline=$!
  train bn "${cores[1]}" "$@" &
  bn=$!
  wait "$baseline" && wait "$bn"
else
  train baseline "" "$@"
  train bn "" "$@"
fi
"$python" scripts/plot_figure1.py --baseline="$runs/mnist_baseline" --bn="$runs/mnist_bn" --out="$runs/figure1.png"
echo "Figure 1 reproduced in $(($(date +%s) - start)) s: $runs/figure1.png"
