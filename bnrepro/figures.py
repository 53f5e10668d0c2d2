"""Figure 1 of the paper from two run directories' `metrics.jsonl` (Sec. 4.1).

(a) test accuracy of the MNIST net with and without BN over training;
(b, c) the {15, 50, 85}th percentiles over test examples of one last-hidden-layer sigmoid
input over training, (b) without BN and (c) with BN.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display needed
import matplotlib.pyplot as plt
import numpy as np

from bnrepro.train import DIVERGED_FILE

METRICS_FILE = "metrics.jsonl"
FIGURE1_KEYS = ("step", "test_accuracy", "p15", "p50", "p85", "p50_units")


def read_evaluations(workdir: str | os.PathLike, required: tuple[str, ...] = FIGURE1_KEYS) -> list[dict]:
    """The evaluation records (those with `test_accuracy`) of a run's metrics.jsonl, by step, which must
    hold the keys `required` (by default those Figure 1 needs)."""
    path = os.path.join(workdir, METRICS_FILE)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} does not exist: is {workdir} a finished bnrepro run directory?")
    with open(path) as f:
        records = [json.loads(line) for line in f if line.strip()]
    evaluations = sorted((r for r in records if "test_accuracy" in r), key=lambda r: r["step"])
    if not evaluations:
        raise ValueError(f"{path} holds no evaluation (no record with test_accuracy).")
    missing = [k for k in required if k not in evaluations[0]]
    if missing:
        raise ValueError(f"{path}: evaluation records lack {missing}; expected {list(required)}.")
    return evaluations


def median_drift(evaluations: list[dict]) -> float:
    """How far the input distributions move over training: for each last-hidden-layer unit the
    range (max - min) of its median input across evaluations, averaged over units."""
    medians = np.asarray([r["p50_units"] for r in evaluations])  # (evaluations, units)
    return float(np.mean(medians.max(0) - medians.min(0)))


def plot_figure1(baseline: list[dict], batch_norm: list[dict]) -> plt.Figure:
    """Figure 1 (a, b, c) from the evaluation records of the baseline and the BN net."""
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    for records, label, style in ((baseline, "Without BN", "--"), (batch_norm, "With BN", "-")):
        axes[0].plot([r["step"] for r in records], [r["test_accuracy"] for r in records], style, label=label)
    axes[0].set(title="(a) test accuracy", xlabel="training step", ylabel="accuracy", ylim=(0.7, 1.0))
    axes[0].legend(loc="lower right")
    axes[0].grid(alpha=0.3)

    limit = max(abs(r[k]) for records in (baseline, batch_norm) for r in records for k in ("p15", "p85"))
    for ax, records, title in ((axes[1], baseline, "(b) without BN"), (axes[2], batch_norm, "(c) with BN")):
        steps = [r["step"] for r in records]
        for key in ("p85", "p50", "p15"):
            ax.plot(steps, [r[key] for r in records], color="k", lw=1.0 if key == "p50" else 0.7)
        ax.set(
            title=f"{title}: drift {median_drift(records):.2f}",
            xlabel="training step",
            ylabel="sigmoid input (15/50/85th pct.)",
            ylim=(-1.05 * limit, 1.05 * limit),
        )
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


TABLE2_RUNS = ("inception", "bn_baseline", "bn_x5", "bn_x30", "bn_x5_sigmoid", "sigmoid")
TABLE2_PAPER = {  # Table 2: steps to 72.2% (Inception's best), max accuracy
    "inception": ("31.0e6", "72.2%"),
    "bn_baseline": ("13.3e6", "72.7%"),
    "bn_x5": ("2.1e6", "73.0%"),
    "bn_x30": ("2.7e6", "74.8%"),
    "bn_x5_sigmoid": ("—", "69.8%"),
    "sigmoid": ("—", "chance"),
}


def table2(workdir: str | os.PathLike) -> str:
    """Table 2 in markdown from `workdir/RUN` run directories (configs/fashion_table2.py): for each run the
    steps it needs to reach the `inception` run's best accuracy, and its own best, beside the paper's."""
    workdir = Path(workdir)
    runs = {}
    for variant in TABLE2_RUNS:
        diverged = workdir / variant / DIVERGED_FILE
        runs[variant] = [] if diverged.exists() else read_evaluations(workdir / variant, required=())
    target = max(r["test_accuracy"] for r in runs["inception"]) if runs["inception"] else float("nan")
    lines = [
        f"| run | steps to {target:.1%} | max accuracy (at step) | paper: steps to 72.2% | paper: max |",
        "|---|---|---|---|---|",
    ]
    for variant, records in runs.items():
        if not records:
            lines.append(
                f"| {variant} | diverged | diverged | {TABLE2_PAPER[variant][0]} | {TABLE2_PAPER[variant][1]} |"
            )
            continue
        reached = next((r["step"] for r in records if r["test_accuracy"] >= target), None)
        best = max(records, key=lambda r: r["test_accuracy"])
        lines.append(
            f"| {variant} | {reached if reached is not None else '—'} | {best['test_accuracy']:.1%} "
            f"({best['step']}) | {TABLE2_PAPER[variant][0]} | {TABLE2_PAPER[variant][1]} |"
        )
    return "\n".join(lines)
