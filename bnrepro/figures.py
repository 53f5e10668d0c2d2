"""Figures from run directories.

Figure 1 of the paper (Sec. 4.1) from the `metrics.jsonl` of the MNIST net's runs with and without BN, each over
seeds: (a) test accuracy over training, the mean over the seeds and its min-max band; (b, c) the {15, 50, 85}th
percentiles over test examples of one last-hidden-layer sigmoid input over training, (b) without BN and (c) with BN,
of the first seed; and the table of final accuracy and drift (mean ± std over the seeds). Table 2 at CPU scale, a
sweep's curves and final accuracies, and Santurkar et al. (2018)'s gradient-propagation measurements (`plot_ics`,
`ics_summary`).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import matplotlib.pyplot as plt
import numpy as np

from bnrepro.training.run_dir import CONFIG_FILE, DIAGNOSTICS_FILE, DIVERGED_FILE, METRICS_FILE, read_records

FIGURE1_KEYS = ("step", "test_accuracy", "p15", "p50", "p85", "p50_units")


def read_evaluations(workdir: str | os.PathLike, required: tuple[str, ...] = FIGURE1_KEYS) -> list[dict]:
    """The evaluation records (those with `test_accuracy`) of a run's metrics.jsonl, by step, which must
    hold the keys `required` (by default those Figure 1 needs)."""
    path = os.path.join(workdir, METRICS_FILE)
    records = read_records(workdir, METRICS_FILE)
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


# A Figure 1 net over seeds: each seed's evaluation records (`read_evaluations`), by seed.
Seeds = Mapping[int, list[dict]]
AHEAD_AFTER = 5_000  # Fig. 1(a), BN "trains faster": the evaluations compared are those after this step
ZOOM_FROM = 10_000  # Fig. 1(a)'s inset: the steps from here on, enlarged


def seed_dirs(root: Path, name: str) -> list[Path]:
    """The run directory `root/name` (if it exists) and its seeds' siblings, `name` followed by `seed`, an
    optional `=` and a number, joined by `_`, `-`, `,` or `.` (`mnist_bn_seed1`, `mnist_bn,seed=2`), by seed."""
    first = root / name
    pattern = re.compile(rf"{re.escape(first.name)}[_,.-]seed=?(\d+)")
    seeds = [p for p in first.parent.glob(f"{first.name}*") if p.is_dir() and pattern.fullmatch(p.name)]
    seeds.sort(key=lambda p: int(pattern.fullmatch(p.name)[1]))
    return ([first] if first.is_dir() else []) + seeds


def read_seeds(workdirs: Sequence[str | os.PathLike]) -> dict[int, list[dict]]:
    """The evaluation records of a net's run directories, one per seed (`seed_dirs` finds
    them), by the seed their config.json records, in seed order. Two directories of one seed are a ValueError
    naming both."""
    seeds, found = {}, {}
    for workdir in workdirs:
        config = Path(workdir, CONFIG_FILE)
        seed = json.loads(config.read_text()).get("seed") if config.exists() else None
        if seed is None:
            raise ValueError(f"{config} does not exist or records no seed: is {workdir} a training run?")
        if seed in found:
            raise ValueError(f"{found[seed]} and {workdir} are both runs of seed {seed}: move one of them away.")
        found[seed], seeds[seed] = workdir, read_evaluations(workdir)
    return dict(sorted(seeds.items()))


def seed_curves(seeds: Seeds, key: str) -> tuple[np.ndarray, np.ndarray]:
    """The steps at which every seed evaluated, and `key` of each seed there: (steps,), (seeds, steps)."""
    by_step = [{r["step"]: r[key] for r in records} for records in seeds.values()]
    steps = sorted(set.intersection(*(set(values) for values in by_step)))
    return np.asarray(steps), np.asarray([[values[s] for s in steps] for values in by_step], dtype=float)


def bn_ahead(baseline: Seeds, batch_norm: Seeds, after: int = AHEAD_AFTER) -> tuple[int, int]:
    """Fig. 1(a)'s "BN trains faster" over the seeds both nets have: at how many of the evaluations after step
    `after` (those every such run made) the BN net's test accuracy is above the baseline's of the same seed for
    every seed, and how many evaluations were compared."""
    paired = sorted(set(baseline) & set(batch_norm))
    if not paired:
        raise ValueError(f"no seed trained both with BN {sorted(batch_norm)} and without {sorted(baseline)}.")
    steps, ours = seed_curves({seed: batch_norm[seed] for seed in paired}, "test_accuracy")
    their_steps, theirs = seed_curves({seed: baseline[seed] for seed in paired}, "test_accuracy")
    compared = np.intersect1d(steps, their_steps)
    compared = compared[compared > after]
    ahead = ours[:, np.searchsorted(steps, compared)] > theirs[:, np.searchsorted(their_steps, compared)]
    return int(np.all(ahead, axis=0).sum()), len(compared)


def steps_to(records: Sequence[Mapping[str, Any]], threshold: float) -> int | None:
    """The first evaluated step of `records` (a run's evaluations, by step) at which the test accuracy reaches
    `threshold`; None if none does."""
    return next((r["step"] for r in records if r["test_accuracy"] >= threshold), None)


def mean_std(values: Sequence[float], spec: str) -> str:
    """One value as `format(value, spec)`; several as `mean ± std` (sample standard deviation, ddof 1, without
    the sign a `+` in `spec` asks for); none as a dash."""
    if not values:
        return "—"
    if len(values) == 1:
        return format(values[0], spec)
    return f"{format(float(np.mean(values)), spec)} ± {format(float(np.std(values, ddof=1)), spec.replace('+', ''))}"


def figure1_table(baseline: Seeds, batch_norm: Seeds) -> str:
    """Figure 1 in numbers, in Markdown: for each net its seeds, final step, and final test accuracy and
    `median_drift` as mean ± std over the seeds; then at how many evaluations after step `AHEAD_AFTER` BN is
    ahead for every seed (`bn_ahead`)."""
    lines = ["| net | seeds | final step | test accuracy | median drift |", "|---|---|---|---|---|"]
    for name, seeds in (("without BN", baseline), ("with BN", batch_norm)):
        finals = [records[-1] for records in seeds.values()]
        lines.append(
            f"| {name} | {len(seeds)} | {', '.join(str(s) for s in sorted({r['step'] for r in finals}))} | "
            f"{mean_std([r['test_accuracy'] for r in finals], '.2%')} | "
            f"{mean_std([median_drift(records) for records in seeds.values()], '.3f')} |"
        )
    ahead, compared = bn_ahead(baseline, batch_norm)
    paired = sorted(set(baseline) & set(batch_norm))
    lines.append(
        f"\nBN ahead at {ahead} of {compared} evaluations after step {AHEAD_AFTER} for every seed "
        f"(seeds {', '.join(map(str, paired))}, each BN net against the baseline of its seed)."
    )
    return "\n".join(lines)


def plot_figure1(baseline: Seeds, batch_norm: Seeds) -> plt.Figure:
    """Figure 1 from the evaluation records of the baseline and the BN net over seeds: (a) test accuracy, the
    mean over the seeds and its min-max band; (b, c) the first seed's 15th/50th/85th percentiles of one
    last-hidden-layer sigmoid input (a unit's percentiles are not averaged across seeds: each seed's unit is
    another unit), its `median_drift` in the title."""
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    zoom = axes[0].inset_axes((0.4, 0.33, 0.57, 0.4))  # the seeds' spread is a few tenths of a point: enlarged
    handles, zoomed = [], []
    for seeds, label, style, colour in ((baseline, "Without BN", "--", "C0"), (batch_norm, "With BN", "-", "C1")):
        steps, accuracy = seed_curves(seeds, "test_accuracy")
        for ax in (axes[0], zoom):
            band = ax.fill_between(steps, accuracy.min(0), accuracy.max(0), color=colour, alpha=0.3, lw=0)
            (line,) = ax.plot(steps, accuracy.mean(0), style, color=colour, lw=1.2)
        count = f"{len(seeds)} seeds" if len(seeds) > 1 else f"seed {next(iter(seeds))}"
        handles.append(((band, line), f"{label}: mean, min-max of {count}"))
        zoomed.append((steps[steps >= ZOOM_FROM], accuracy[:, steps >= ZOOM_FROM]))
    last = max(s.max(initial=0) for s, _ in zoomed)
    low, high = min(a.min(initial=1.0) for _, a in zoomed), max(a.max(initial=0.0) for _, a in zoomed)
    if last > ZOOM_FROM and low < high:  # else nothing to enlarge
        margin = 0.1 * (high - low)
        zoom.set(xlim=(ZOOM_FROM, last), ylim=(low - margin, high + margin))
        axes[0].indicate_inset_zoom(zoom, edgecolor="0.5")
    zoom.tick_params(labelsize=7)
    zoom.xaxis.set_major_locator(plt.MaxNLocator(3))
    zoom.grid(alpha=0.3)
    axes[0].set(title="(a) test accuracy", xlabel="training step", ylabel="accuracy", ylim=(0.7, 1.0))
    axes[0].legend(*zip(*handles), loc="lower right", fontsize=8)
    axes[0].grid(alpha=0.3)

    first = [next(iter(seeds.items())) for seeds in (baseline, batch_norm)]  # (seed, records) of each net
    limit = max(abs(r[k]) for _, records in first for r in records for k in ("p15", "p85"))
    for ax, (seed, records), title in zip(axes[1:], first, ("(b) without BN", "(c) with BN")):
        steps = [r["step"] for r in records]
        for key in ("p85", "p50", "p15"):
            ax.plot(steps, [r[key] for r in records], color="k", lw=1.0 if key == "p50" else 0.7)
        ax.set(
            title=f"{title}, seed {seed}: drift {median_drift(records):.2f}",
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
    """Table 2 in markdown from the `workdir/RUN` run directories (configs/fashion_table2.py) and their seeds'
    siblings (`seed_dirs`): for each run the steps it needs to reach the `inception` run's best accuracy (with
    seeds, the mean over its seeds of their best), and its own best, beside the paper's. With seeds, each cell is
    the mean ± std over the seeds, steps over those that reached the target (`k/n` says how many)."""
    workdir = Path(workdir)
    runs = {}  # variant: each seed's evaluation records, [] for a diverged seed
    for variant in TABLE2_RUNS:
        runs[variant] = [
            [] if (path / DIVERGED_FILE).exists() else read_evaluations(path, required=())
            for path in seed_dirs(workdir, variant)
        ]
    inception_bests = [max(r["test_accuracy"] for r in records) for records in runs["inception"] if records]
    target = float(np.mean(inception_bests)) if inception_bests else float("nan")
    best_header = "max accuracy (at step)" if all(len(seeds) <= 1 for seeds in runs.values()) else "max accuracy"
    lines = [
        f"| run | seeds | steps to {target:.1%} | {best_header} | paper: steps to 72.2% | paper: max |",
        "|---|---|---|---|---|---|",
    ]
    for variant, seeds in runs.items():
        paper = f"{TABLE2_PAPER[variant][0]} | {TABLE2_PAPER[variant][1]}"
        trained = [records for records in seeds if records]
        if not trained:
            missing = "diverged" if seeds else "not run"
            lines.append(f"| {variant} | {len(seeds)} | {missing} | {missing} | {paper} |")
            continue
        reached = [steps_to(records, target) for records in trained]
        steps = [step for step in reached if step is not None]
        bests = [max(records, key=lambda r: r["test_accuracy"]) for records in trained]
        if len(seeds) == 1:
            steps_cell = str(steps[0]) if steps else "—"
            best_cell = f"{bests[0]['test_accuracy']:.1%} ({bests[0]['step']})"
        else:
            diverged = f", {len(seeds) - len(trained)} diverged" if len(trained) < len(seeds) else ""
            steps_cell = f"{mean_std(steps, '.0f')} ({len(steps)}/{len(seeds)} reached{diverged})"
            best_cell = mean_std([b["test_accuracy"] for b in bests], ".1%")
        lines.append(f"| {variant} | {len(seeds)} | {steps_cell} | {best_cell} | {paper} |")
    return "\n".join(lines)


ADABN_FILE = "adabn.md"  # what scripts/adabn.py writes into the run it adapts
# AdaBN on one run: test images (a domain shift, or "none") -> (accuracy with the source statistics, with AdaBN's).
AdaBN = Mapping[str, tuple[float, float]]


def adabn_markdown(result: AdaBN) -> str:
    """One run's AdaBN table in Markdown, as scripts/adabn.py writes it into WORKDIR/adabn.md."""
    lines = ["| test images | source statistics | AdaBN | change |", "|---|---|---|---|"]
    for name, (source, adapted) in result.items():
        lines.append(f"| {name} | {source:.2%} | {adapted:.2%} | {100 * (adapted - source):+.2f} |")
    return "\n".join(lines)


def read_adabn(workdir: str | os.PathLike) -> dict[str, tuple[float, float]]:
    """The AdaBN table (`adabn_markdown`) of a run that scripts/adabn.py adapted, as numbers."""
    path = Path(workdir, ADABN_FILE)
    result = {}
    for line in path.read_text().splitlines()[2:]:
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        try:
            result[cells[0]] = (float(cells[1].rstrip("%")) / 100, float(cells[2].rstrip("%")) / 100)
        except (IndexError, ValueError):
            raise ValueError(f"{path}: unreadable row {line!r}; rerun scripts/adabn.py on {workdir}.") from None
    return result


def adabn_table(results: Sequence[AdaBN]) -> str:
    """AdaBN over seeds (each seed's `read_adabn`) in Markdown: per test images, the accuracy with the source
    statistics and with AdaBN's, and the change in points, as mean ± std over the seeds."""
    lines = ["| test images | seeds | source statistics | AdaBN | change (points) |", "|---|---|---|---|---|"]
    for name in results[0]:
        pairs = [result[name] for result in results if name in result]
        source, adapted = ([pair[i] for pair in pairs] for i in (0, 1))
        change = [100 * (a - s) for s, a in pairs]
        cells = (str(len(pairs)), mean_std(source, ".2%"), mean_std(adapted, ".2%"), mean_std(change, "+.2f"))
        lines.append(f"| {name} | {' | '.join(cells)} |")
    return "\n".join(lines)


def _values(rows: list[dict], key: str) -> list:
    return sorted({row[key] for row in rows}, key=lambda v: (str(type(v)), v))


def plot_sweep_curves(
    rows: list[dict],
    curves: list[list[dict]],
    *,
    grid: tuple[str, str] = ("model.activation", "model.batch_norm"),
    colour: str = "learning_rate",
) -> plt.Figure:
    """A grid of test-accuracy curves: one panel per value pair of the `grid` keys (activation x BN by
    default), one colour per value of `colour` (the learning rate), one line per point (seeds overlaid).
    `rows` are a sweep's summary rows (`bnrepro.sweep.summarize`), `curves` each row's evaluation records;
    diverged points end with an x where their curve stops."""
    row_values, column_values = _values(rows, grid[0]), _values(rows, grid[1])
    colours = {
        v: plt.cm.viridis(i / max(len(_values(rows, colour)) - 1, 1)) for i, v in enumerate(_values(rows, colour))
    }
    fig, axes = plt.subplots(
        len(row_values), len(column_values), figsize=(4.2 * len(column_values), 3.2 * len(row_values)),
        squeeze=False, sharex=True, sharey=True,
    )  # fmt: skip
    for row, records in zip(rows, curves):
        ax = axes[row_values.index(row[grid[0]])][column_values.index(row[grid[1]])]
        steps, accuracies = [r["step"] for r in records], [r["test_accuracy"] for r in records]
        ax.plot(steps, accuracies, color=colours[row[colour]], lw=1.0, alpha=0.8)
        if row["status"] == "diverged":
            ax.plot(steps[-1:] or [0], accuracies[-1:] or [0.0], "x", color=colours[row[colour]], ms=8)
    for i, row_value in enumerate(row_values):
        for j, column_value in enumerate(column_values):
            ax = axes[i][j]
            ax.set_title(f"{grid[0]}={row_value}, {grid[1]}={column_value}", fontsize=9)
            ax.grid(alpha=0.3)
            ax.set(ylim=(0.0, 1.0), xlabel="training step" if i == len(row_values) - 1 else None)
        axes[i][0].set_ylabel("test accuracy")
    handles = [plt.Line2D([], [], color=c, label=f"{colour}={v:g}") for v, c in colours.items()]
    axes[0][-1].legend(handles=handles, loc="lower right", fontsize=8)
    fig.tight_layout()
    return fig


def plot_sweep_final(
    rows: list[dict], *, x: str = "learning_rate", lines: tuple[str, str] = ("model.activation", "model.batch_norm")
) -> plt.Figure:
    """Final test accuracy against `x` (log scale), one line per value pair of `lines` through the mean over
    the other keys (seeds), every point shown; diverged or failed points are red crosses at accuracy 0."""
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for first in _values(rows, lines[0]):
        for second in _values(rows, lines[1]):
            members = [r for r in rows if r[lines[0]] == first and r[lines[1]] == second]
            xs = _values(members, x)
            finals = [[r["final_accuracy"] for r in members if r[x] == v and r["status"] == "finished"] for v in xs]
            line = ax.plot(
                xs, [np.mean(f) if f else np.nan for f in finals], "o-" if second else "s--",
                label=f"{lines[0]}={first}, {lines[1]}={second}",
            )[0]  # fmt: skip
            for v, f in zip(xs, finals):
                ax.plot([v] * len(f), f, ".", color=line.get_color(), alpha=0.5)
    failed = [r for r in rows if r["status"] != "finished"]
    if failed:
        ax.plot([r[x] for r in failed], [0.0] * len(failed), "rx", ms=9, label="diverged / failed")
    ax.set(xscale="log", xlabel=x, ylabel="final test accuracy", ylim=(-0.03, 1.0))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    return fig


# Santurkar et al. (2018)'s quantities, from the `diagnostics.jsonl` of runs with `config.diagnostics_every`:
# (record key, per-layer key?, panel title).
ICS_QUANTITIES = (
    ("ics_l2", True, "ICS: ||G - G'||"),
    ("ics_cosine", True, "ICS: cos(G, G')"),
    ("grad_norm", True, "gradient norm"),
    ("landscape/loss_variation", False, "loss variation along the gradient"),
    ("landscape/gradient_predictiveness", False, "gradient predictiveness: max ||g - g'||"),
    ("landscape/beta_smoothness", False, "effective beta-smoothness"),
    ("jacobian_sv_mean", True, "mean singular value of the layer Jacobian"),
)


class IcsRun(NamedTuple):
    """One run's diagnostics records and evaluation records, by step."""

    diagnostics: list[dict]
    evaluations: list[dict]


def run_label(workdir: str | os.PathLike) -> str:
    """ "ACTIVATION, NORM" of a run from its config.json, NORM one of no BN, BN, noisy BN."""
    model = json.loads(Path(workdir, CONFIG_FILE).read_text())["model"]
    # `model.bn` since issue 12; a run made before keeps the flat `model.bn_noise_*` keys.
    bn = model.get(
        "bn", {"noise_shift": model.get("bn_noise_shift", 0.0), "noise_scale": model.get("bn_noise_scale", 1.0)}
    )
    noisy = bn["noise_shift"] > 0.0 or bn["noise_scale"] > 1.0
    norm = "noisy BN" if model.get("batch_norm") and noisy else "BN" if model.get("batch_norm") else "no BN"
    return f"{model['activation']}, {norm}"


def read_ics_runs(workdirs: list[str | os.PathLike]) -> dict[str, list[IcsRun]]:
    """The runs in `workdirs` grouped by `run_label` (the seeds of one net together), in the order given."""
    runs: dict[str, list[IcsRun]] = {}
    for workdir in workdirs:
        path = Path(workdir, DIAGNOSTICS_FILE)
        if not path.exists():
            raise FileNotFoundError(f"{path} does not exist: was {workdir} trained with config.diagnostics_every?")
        diagnostics = sorted(read_records(workdir, DIAGNOSTICS_FILE), key=lambda r: r["step"])
        evaluations = read_evaluations(workdir, required=("step", "test_accuracy"))
        runs.setdefault(run_label(workdir), []).append(IcsRun(diagnostics, evaluations))
    return runs


def _mean_curve(runs: list[IcsRun], key: str, source: str = "diagnostics") -> tuple[np.ndarray, np.ndarray]:
    """The steps all `runs` recorded `key` at, and its mean over the runs there."""
    per_run = [{r["step"]: r[key] for r in getattr(run, source)} for run in runs]
    steps = sorted(set.intersection(*(set(values) for values in per_run)))
    return np.asarray(steps), np.asarray([np.mean([values[s] for values in per_run], axis=0) for s in steps])


def plot_ics(runs: dict[str, list[IcsRun]], layer: str) -> plt.Figure:
    """Santurkar et al.'s Figures 3-5 for the MLP: ICS, gradient norm and the landscape along the gradient over
    training (per-layer quantities of `layer`), the layer Jacobian's mean singular value, its final spectrum,
    and test accuracy; one line per net (the mean over its seeds)."""
    fig, axes = plt.subplots(3, 3, figsize=(14, 10.5))
    axes = axes.ravel()
    for label, members in runs.items():
        style = "--" if "no BN" in label else ":" if "noisy" in label else "-"
        colour = "tab:blue" if label.startswith("sigmoid") else "tab:orange"
        for ax, (key, per_layer, title) in zip(axes, ICS_QUANTITIES):
            steps, values = _mean_curve(members, f"{key}/{layer}" if per_layer else key)
            ax.plot(steps, values, style, color=colour, label=label)
            ax.set_title(f"{title} ({layer})" if per_layer else title, fontsize=10)
        steps, spectrum = _mean_curve(members, f"jacobian_sv/{layer}")
        axes[7].plot(np.arange(1, spectrum.shape[1] + 1), spectrum[-1], style, color=colour, label=label)
        steps, accuracy = _mean_curve(members, "test_accuracy", source="evaluations")
        axes[8].plot(steps, accuracy, style, color=colour, label=label)
    axes[7].set(title=f"Jacobian singular values at the end ({layer})", xlabel="index", yscale="log", ylim=(1e-3, None))
    axes[7].axhline(1.0, color="grey", lw=0.8)
    axes[8].set(title="test accuracy", ylim=(None, 1.0))
    for ax in axes:
        ax.grid(alpha=0.3)
        if ax is not axes[7]:
            ax.set_xlabel("training step")
    for ax in axes[[0, 2, 3, 4, 5]]:
        ax.set_yscale("log")
    axes[8].legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    return fig


def ics_summary(runs: dict[str, list[IcsRun]], layer: str) -> list[dict]:
    """One row per net: its number of seeds, and each seed's value of each quantity of `ICS_QUANTITIES` (per-layer
    ones at `layer`) averaged over the second half of its training, and of its final test accuracy (`ics_cell`
    writes them as mean ± std)."""
    rows = []
    for label, members in runs.items():
        row: dict[str, Any] = {"net": label, "seeds": len(members)}
        for key, per_layer, _ in ICS_QUANTITIES:
            name = f"{key}/{layer}" if per_layer else key
            row[key.removeprefix("landscape/")] = [
                float(np.mean([r[name] for r in run.diagnostics if r["step"] > run.diagnostics[-1]["step"] / 2]))
                for run in members
            ]
        row["final_accuracy"] = [run.evaluations[-1]["test_accuracy"] for run in members]
        rows.append(row)
    return rows


def ics_cell(key: str, value: Any) -> str:
    """A cell of `ics_summary`'s table: per-seed values as mean ± std (accuracy in %, the rest to 3 digits)."""
    if isinstance(value, list):
        return mean_std(value, ".2%" if key == "final_accuracy" else ".3g")
    return str(value)


def markdown_table(
    rows: list[dict],
    columns: list[str] | None = None,
    cell: Callable[[str, Any], str] | None = None,
    header: list[str] | None = None,
) -> str:
    """`rows` as a Markdown table: `columns` (default: the first row's keys) under `header` (default: the
    column names), each value written by `cell(column, value)` (default: floats to 4 significant digits)."""
    columns = columns or list(rows[0])
    cell = cell or (lambda _, value: f"{value:.4g}" if isinstance(value, float) else str(value))
    lines = ["| " + " | ".join(header or columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(c, row.get(c)) for c in columns) + " |" for row in rows]
    return "\n".join(lines)
