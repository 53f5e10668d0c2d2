"""Two of the advantages the paper claims for BN, measured on the Figure 1 MLP by a sweep each
(docs/experiments.md): Sec. 3.3's "BN reduces the dependence of gradients on the scale of the parameters or of
their initial values" (`configs/sweeps/init_scale.py`) and Sec. 3.4's "BN regularizes the model and reduces the
need for dropout" (`configs/sweeps/regularization.py`). Each sweep's runs are grouped by net from their
config.json; the tables give mean ± std over the seeds, the figures the same means with the std as error bars.
Reads run directories only (no jax)."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np

from bnrepro.figures import mean_std, steps_to
from bnrepro.report.content import Content, Figure, png, shown_config
from bnrepro.report.runs import Run, Table, read_run, seeds_cell
from bnrepro.training.run_dir import CONFIG_FILE, WEIGHT_NORMS_FILE, read_records

THRESHOLD = 0.9  # both sweeps' "steps to" test accuracy
INIT_SCALE_DIR = "sweeps/init_scale"
REGULARIZATION_DIR = "sweeps/regularization"
INIT_SCALE_COMMAND = "python -m bnrepro.sweep --sweep=configs/sweeps/init_scale.py --workdir={runs}/" + INIT_SCALE_DIR
REGULARIZATION_COMMAND = (
    "python -m bnrepro.sweep --sweep=configs/sweeps/regularization.py --workdir={runs}/" + REGULARIZATION_DIR
)
NORM_LAYER = "DenseBN_1/Dense_0"  # the second hidden layer's 100 x 100 weight matrix: BN normalizes its output

Key = tuple[Any, ...]


def sweep_runs(sweep: Path) -> list[Run]:
    """Every point's run in the sweep directory (those a sweep set aside as `NAME.old-TIME` left out)."""
    return [read_run(path.parent) for path in sorted(sweep.glob(f"*/{CONFIG_FILE}")) if ".old-" not in path.parent.name]


def net_label(config: Mapping[str, Any]) -> str:
    """ "sigmoid, BN", "relu, no BN", ... from a run's config.json."""
    return f"{config['model']['activation']}, {'BN' if config['model']['batch_norm'] else 'no BN'}"


def group_runs(runs: Sequence[Run], key: Callable[[Mapping[str, Any]], Key]) -> dict[Key, list[Run]]:
    """The runs by `key` of their config, in sorted order of the keys."""
    groups: dict[Key, list[Run]] = {}
    for run in runs:
        groups.setdefault(key(run.config), []).append(run)
    return {k: groups[k] for k in sorted(groups)}


def _finished(runs: Sequence[Run]) -> list[Run]:
    return [run for run in runs if run.evaluations and not run.diverged]


def _last(run: Run, key: str) -> float:
    return run.evaluations[-1][key]


def _best(run: Run) -> float:
    return max(r["test_accuracy"] for r in run.evaluations)


def norm_growth(run: Run, layer: str = NORM_LAYER) -> float | None:
    """||W|| of `layer` at the run's last weight-norm record over its expected initial value init_std·sqrt(n·m)
    (an n x m matrix of N(0, init_std²) entries; for 100 x 100 the sampled norm is within ~1% of it); None
    without records; infinite where ||W|| overflowed float32 (weights beyond ~1e19). The widths are
    `model.hidden`'s first two: `layer` is the second hidden layer's matrix."""
    path = run.path / WEIGHT_NORMS_FILE
    if not path.exists():
        return None
    records = sorted(read_records(run.path, WEIGHT_NORMS_FILE), key=lambda r: r["step"])
    model = run.config["model"]
    initial = model["init_std"] * math.sqrt(model["hidden"][0] * model["hidden"][1])
    return records[-1][layer] / initial if records else None


def _growths(runs: Sequence[Run]) -> tuple[list[float], int]:
    """The runs' finite `norm_growth`s, and how many overflowed."""
    growths = [g for run in runs if (g := norm_growth(run)) is not None]
    finite = [g for g in growths if math.isfinite(g)]
    return finite, len(growths) - len(finite)


def _mean_std_error(values: Sequence[float]) -> tuple[float, float]:
    """The mean and the sample std (0 for one value) for an error bar; NaN for none."""
    if not values:
        return math.nan, math.nan
    return float(np.mean(values)), float(np.std(values, ddof=1)) if len(values) > 1 else 0.0


def _reached(runs: Sequence[Run]) -> str:
    steps = [s for run in runs if (s := steps_to(run.evaluations, THRESHOLD)) is not None]
    if not runs:
        return "—"
    return mean_std(steps, ".0f") + ("" if len(steps) == len(runs) else f" ({len(steps)} of {len(runs)} reach it)")


# --- Study 1: initial scale (Sec. 3.3) ----------------------------------------------------------------------------


def init_scale_key(config: Mapping[str, Any]) -> Key:
    return (config["model"]["activation"], not config["model"]["batch_norm"], config["model"]["init_std"])


def init_scale_table(groups: Mapping[Key, Sequence[Run]]) -> Table:
    """One row per net and initial scale: seeds, final and best test accuracy, steps to `THRESHOLD`, the growth
    of `NORM_LAYER`'s ||W|| (mean ± std over the seeds that did not diverge)."""
    header = (
        "net", "init_std", "seeds", "final test accuracy", "best test accuracy", f"steps to {THRESHOLD:.0%}",
        f"||W|| of {NORM_LAYER}, end / start",
    )  # fmt: skip
    rows = []
    for (_, _, init_std), runs in groups.items():
        kept = _finished(runs)
        finite, overflowed = _growths(kept)
        rows.append(
            (
                net_label(runs[0].config),
                f"{init_std:g}",
                seeds_cell(runs),
                mean_std([_last(run, "test_accuracy") for run in kept], ".2%"),
                mean_std([_best(run) for run in kept], ".2%"),
                _reached(kept),
                mean_std(finite, ".2f") + (f" ({overflowed} overflow float32)" if overflowed else ""),
            )
        )
    steps = next(iter(groups.values()))[0].config["num_steps"]
    return Table(f"Initial scale, {steps:,} steps: mean ± std over the seeds", header, rows)


def _by_net(groups: Mapping[Key, Sequence[Run]]) -> dict[str, list[tuple[float, list[Run]]]]:
    nets: dict[str, list[tuple[float, list[Run]]]] = {}
    for (_, _, init_std), runs in groups.items():
        nets.setdefault(net_label(runs[0].config), []).append((init_std, _finished(runs)))
    return nets


def plot_init_scale(groups: Mapping[Key, Sequence[Run]]) -> plt.Figure:
    """(a) Final test accuracy against the initial weight scale (log x), one line per net, mean ± std over the
    seeds as error bars (a scale at which every seed diverged has no point); (b) `NORM_LAYER`'s ||W|| at the end
    over its initial value, log-log."""
    fig, (accuracy, growth) = plt.subplots(1, 2, figsize=(11, 4.2))
    nets = _by_net(groups)
    activations = sorted({label.split(",")[0] for label in nets})  # a colour each; BN solid, no BN dashed
    for label, scales in nets.items():
        colour = f"C{activations.index(label.split(',')[0])}"
        style = {"color": colour, "ls": "-" if label.endswith(", BN") else "--", "marker": "o", "capsize": 3}
        x = [s for s, _ in scales]
        finals = [_mean_std_error([_last(run, "test_accuracy") for run in runs]) for _, runs in scales]
        accuracy.errorbar(x, *zip(*finals), label=label, **style)
        grown = [_mean_std_error(_growths(runs)[0]) for _, runs in scales]
        growth.errorbar(x, *zip(*grown), label=label, **style)
    accuracy.set(xscale="log", xlabel="init_std (weights ~ N(0, init_std²); default 0.1)", ylabel="final test accuracy")
    accuracy.set_title("(a) final test accuracy")
    growth.set(xscale="log", yscale="log", xlabel="init_std", ylabel="||W|| at the end / at the start")
    growth.set_title(f"(b) growth of {NORM_LAYER}'s weights")
    growth.axhline(1.0, color="0.6", lw=0.8)
    for ax in (accuracy, growth):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def init_scale(root: Path) -> Content | None:
    """The initial-scale sweep's table and figure; None before any point has run."""
    runs = sweep_runs(root / INIT_SCALE_DIR)
    if not runs:
        return None
    groups = group_runs(runs, init_scale_key)
    diverged = sum(run.diverged for run in runs)
    notes = [f"{diverged} of {len(runs)} runs diverged (left out of the means)"] if diverged else []
    figure = Figure(
        "Initial scale: (a) final test accuracy against init_std, (b) the growth of the middle hidden layer's ||W||; "
        "mean ± std over the seeds",
        png(plot_init_scale(groups)),
    )
    shown = [
        shown_config(root, INIT_SCALE_COMMAND, net) for net in group_runs(runs, lambda c: (net_label(c),)).values()
    ]
    return Content([figure], [init_scale_table(groups)], notes, shown, [])


# --- Study 2: BN as a regularizer (Sec. 3.4) ----------------------------------------------------------------------


def regularization_key(config: Mapping[str, Any]) -> Key:
    return (not config["model"]["batch_norm"], config["model"]["dropout_rate"])


def _regularization_label(config: Mapping[str, Any]) -> str:
    rate = config["model"]["dropout_rate"]
    return f"{'BN' if config['model']['batch_norm'] else 'no BN'}, " + (f"dropout {rate:g}" if rate else "no dropout")


def regularization_table(groups: Mapping[Key, Sequence[Run]]) -> Table:
    """One row per net: final train accuracy (the inference network on the training examples), final test
    accuracy, their gap, best test accuracy, steps to `THRESHOLD` (mean ± std over the seeds)."""
    header = (
        "net", "seeds", "train accuracy", "test accuracy", "gap (train − test)", "best test accuracy",
        f"steps to {THRESHOLD:.0%}",
    )  # fmt: skip
    rows = []
    for runs in groups.values():
        kept = [run for run in _finished(runs) if "train_accuracy" in run.evaluations[-1]]
        train, test = ([_last(run, key) for run in kept] for key in ("train_accuracy", "test_accuracy"))
        rows.append(
            (
                _regularization_label(runs[0].config),
                seeds_cell(runs),
                mean_std(train, ".2%"),
                mean_std(test, ".2%"),
                mean_std([a - b for a, b in zip(train, test)], ".2%"),
                mean_std([_best(run) for run in kept], ".2%"),
                _reached(kept),
            )
        )
    config = next(iter(groups.values()))[0].config
    caption = (
        f"BN and dropout on {config['eval_train_examples']:,} training examples, {config['num_steps']:,} steps: "
        "final accuracies, mean ± std over the seeds"
    )
    return Table(caption, header, rows)


def plot_regularization(groups: Mapping[Key, Sequence[Run]]) -> plt.Figure:
    """Train (dashed) and test (solid) accuracy over training, one colour per net, the mean over its seeds with
    the std as a band."""
    fig, ax = plt.subplots(figsize=(10, 4.2))
    for index, runs in enumerate(groups.values()):
        kept = [run for run in _finished(runs) if "train_accuracy" in run.evaluations[-1]]
        if not kept:
            continue
        length = min(len(run.evaluations) for run in kept)
        steps = [r["step"] for r in kept[0].evaluations[:length]]
        for key, ls in (("test_accuracy", "-"), ("train_accuracy", "--")):
            values = np.array([[r[key] for r in run.evaluations[:length]] for run in kept])
            mean = values.mean(axis=0)
            label = f"{_regularization_label(runs[0].config)}, {key.split('_')[0]}"
            ax.plot(steps, mean, color=f"C{index}", ls=ls, lw=1.3, label=label)
            if len(kept) > 1:
                std = values.std(axis=0, ddof=1)
                ax.fill_between(steps, mean - std, mean + std, color=f"C{index}", alpha=0.15, lw=0)
    ax.set(xlabel="training step", ylabel="accuracy", ylim=(0.85, 1.005))
    ax.set_title("Train (dashed) and test (solid) accuracy, mean over the seeds")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    return fig


def regularization(root: Path) -> Content | None:
    """The regularization sweep's table and figure; None before any point has run."""
    runs = sweep_runs(root / REGULARIZATION_DIR)
    if not runs:
        return None
    groups = group_runs(runs, regularization_key)
    figure = Figure(
        "BN and dropout on a reduced training set: train and test accuracy over training, mean over the seeds",
        png(plot_regularization(groups)),
    )
    shown = [shown_config(root, REGULARIZATION_COMMAND, net) for net in groups.values()]
    return Content([figure], [regularization_table(groups)], [], shown, [])
