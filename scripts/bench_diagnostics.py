"""What recording Santurkar et al.'s measurements (`config.diagnostics_every`) costs: the gradient-propagation
net of `configs/mnist_ics.py` (sigmoid, BN) trained with the single-run CLI, diagnostics off and at three
frequencies, side by side in one run, each in a fresh process on the real MNIST.

    python scripts/bench_diagnostics.py [--steps=10000] [--config=configs/mnist_ics.py:sigmoid,bn]

Prints, per setting: the records written, the wall time of the whole run (start-up, compilation, evaluation
included), the training steps/s the run itself reports (diagnostics excluded: they run between dispatches), and
the wall time each record adds over the run with diagnostics off. Results: docs/performance.md#cost-of-diagnostics.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from absl import app, flags

from bnrepro import figures
from bnrepro.training.run_dir import DIAGNOSTICS_FILE, METRICS_FILE

_STEPS = flags.DEFINE_integer("steps", 10_000, "SGD steps per run.")
_CONFIG = flags.DEFINE_string("config", "configs/mnist_ics.py:sigmoid,bn", "The config file and its argument.")

EVERY = (0, 1000, 250, 50)


def main(argv: list[str]) -> None:
    del argv
    root, rows, baseline = Path(tempfile.mkdtemp(prefix="bench_diagnostics_")), [], None
    for every in EVERY:
        workdir = root / f"every_{every}"
        command = [
            sys.executable, "-m", "bnrepro.main", f"--config={_CONFIG.value}", f"--workdir={workdir}",
            f"--config.num_steps={_STEPS.value}", f"--config.diagnostics_every={every}",
        ]  # fmt: skip
        start = time.perf_counter()
        subprocess.run(command, check=True, capture_output=True)
        wall = time.perf_counter() - start
        records = 0
        if every:
            records = len((workdir / DIAGNOSTICS_FILE).read_text().splitlines())
        speeds = [json.loads(line)["steps_per_second"] for line in (workdir / METRICS_FILE).read_text().splitlines()]
        baseline = wall if baseline is None else baseline
        rows.append({
            "diagnostics_every": f"{every} (off)" if every == 0 else str(every),
            "records": records,
            "wall s": round(wall, 1),
            "train steps/s": round(sum(speeds) / len(speeds)),
            "extra s per record": f"{(wall - baseline) / records:.2f}" if records else "-",
        })  # fmt: skip
    print(figures.markdown_table(rows))


if __name__ == "__main__":
    app.run(main)
