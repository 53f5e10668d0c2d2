"""The one table of experiments (`EXPERIMENTS`, in the README's order): where each one's runs live under `--runs`,
the command that makes them, what the paper (or the later paper it follows) reports, its section of
docs/experiments.md, and how its figure and tables are drawn from the run directories (`Experiment.build`).
The results page reads it; the README's results table and docs/experiments.md quote it (tests/test_readme.py
checks that they do). Each of the paper's numbers is written here once (Table 2's in `figures.TABLE2_PAPER`)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import matplotlib.pyplot as plt

from bnrepro import figures
from bnrepro.report import claims
from bnrepro.report.content import Content, Figure, ShownConfig, png, shown_config
from bnrepro.report.runs import Column, Run, Table, parse_markdown_table, read_run, read_variant, variant_table
from bnrepro.training.run_dir import DIAGNOSTICS_FILE


class Experiment(NamedTuple):
    key: str  # names its figure files next to the Markdown page
    title: str
    reproduces: str  # the section and figure or table of the paper (or the later paper) it reproduces
    paper: str  # what that paper reports, for the reader to compare
    command: str  # the command(s) that make its runs; `{runs}` is the --runs directory
    build: Callable[[Path], Content | None]  # its content from the --runs directory; None: not run yet
    details: str  # its section of the docs: command, wall time, what reproduced and what did not


class Variant(NamedTuple):
    label: str
    run: str  # its run directory, relative to --runs (seeds: `figures.seed_dirs`)
    command: str  # the command that trains it; `{runs}` is the --runs directory
    paper: tuple[str, ...] = ()  # the paper's numbers for it, one per paper column


def plot_accuracy_curves(groups: Mapping[str, Sequence[Run]], title: str) -> plt.Figure:
    """Test accuracy over training, one colour per variant, one line per seed (seed 0 darker); the legend gives
    each variant's number of seeds."""
    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    for index, (label, runs) in enumerate(groups.items()):
        legend = label if len(runs) == 1 else f"{label}, {len(runs)} seeds"
        for seed, run in enumerate(runs):
            steps = [r["step"] for r in run.evaluations]
            accuracies = [r["test_accuracy"] for r in run.evaluations]
            ax.plot(
                steps,
                accuracies,
                color=f"C{index}",
                lw=1.2,
                alpha=0.9 if seed == 0 else 0.5,
                label=legend if seed == 0 else None,
            )
    ax.set(title=title, xlabel="training step", ylabel="test accuracy")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    return fig


def _shown_configs(root: Path, variants: Sequence[Variant], groups: Mapping[str, Sequence[Run]]) -> list[ShownConfig]:
    return [shown_config(root, variant.command, runs) for variant in variants if (runs := groups[variant.label])]


def variants_content(
    root: Path,
    variants: Sequence[Variant],
    caption: str,
    *,
    paper_columns: Sequence[str] = (),
    extra: Sequence[Column] = (),
) -> tuple[Content, dict[str, list[Run]]] | None:
    """The variant table, the accuracy curves, the configs and the missing variants of an experiment made of
    `variants`, and its runs by variant; None if none has run."""
    groups = {variant.label: read_variant(root, variant.run) for variant in variants}
    if not any(groups.values()):
        return None
    table = variant_table(
        caption, groups, root, extra=extra, paper_columns=paper_columns, paper={v.label: v.paper for v in variants}
    )
    ran = {label: runs for label, runs in groups.items() if any(run.evaluations for run in runs)}
    curves = (
        [Figure(f"{caption}: test accuracy over training, one line per seed", png(plot_accuracy_curves(ran, caption)))]
        if ran
        else []
    )
    missing = [(v.label, v.command.format(runs=root.as_posix())) for v in variants if not groups[v.label]]
    return Content(curves, [table], [], _shown_configs(root, variants, groups), missing), groups


# --- Figure 1 (Sec. 4.1) ----------------------------------------------------------------------------------------

FIGURE1_COMMAND = "RUNS_DIR={runs} bash scripts/reproduce_figure1.sh"  # the README's main command, into --runs
FIGURE1 = (
    Variant(
        "without BN",
        "mnist_baseline",
        "python -m bnrepro.main --config=configs/mnist_mlp.py:baseline --workdir={runs}/mnist_baseline",
        ("≈95–97%", "drifts"),
    ),
    Variant(
        "with BN",
        "mnist_bn",
        "python -m bnrepro.main --config=configs/mnist_mlp.py:bn --workdir={runs}/mnist_bn",
        ("≈98–99%", "stable"),
    ),
)


def _median_drift(evaluations: list[dict[str, Any]]) -> float | None:
    return figures.median_drift(evaluations) if "p50_units" in evaluations[0] else None


def _by_seed(runs: Sequence[Run]) -> dict[int, list[dict[str, Any]]]:
    return {run.config.get("seed", index): run.evaluations for index, run in enumerate(runs)}


def bn_ahead(batch_norm: Sequence[Run], baseline: Sequence[Run]) -> list[str]:
    """At how many of the evaluations after `figures.AHEAD_AFTER` steps the BN net's test accuracy is above the
    baseline's of the same seed (`figures.bn_ahead`): for every seed at once, then for each seed both nets have."""
    ours, theirs = _by_seed(batch_norm), _by_seed(baseline)
    paired = sorted(set(ours) & set(theirs))
    if not paired:
        return []
    after = figures.AHEAD_AFTER
    ahead, compared = figures.bn_ahead(theirs, ours)
    which = f"seed{'s' if len(paired) > 1 else ''} {', '.join(map(str, paired))}"
    lines = [f"BN ahead at {ahead} of {compared} evaluations after step {after} for every seed ({which})"]
    for seed in paired:
        ahead, compared = figures.bn_ahead({seed: theirs[seed]}, {seed: ours[seed]})
        lines.append(f"seed {seed}: BN ahead at {ahead} of {compared} evaluations after step {after}")
    return lines


def figure1(root: Path) -> Content | None:
    """Figure 1 (a, b, c) over all seeds of each net (`figures.plot_figure1`: (a) the mean and min-max band of
    the test accuracy, (b, c) the first seed's percentiles), in place of the accuracy curves once both nets have
    run; the table of final test accuracy and median drift (mean ± std over the seeds, as
    `scripts/plot_figure1.py` prints them), beside what the figure shows; at how many evaluations BN is ahead."""
    found = variants_content(
        root,
        FIGURE1,
        "Figure 1: MNIST, 784-100-100-100-10 sigmoid MLP, 50k steps",
        paper_columns=("paper: test accuracy at 50k (read off Fig. 1a)", "paper: input distribution (Fig. 1b, c)"),
        extra=[("median drift", _median_drift, ".3f")],
    )
    if found is None:
        return None
    content, groups = found
    baseline, batch_norm = ([run for run in groups[net] if run.evaluations] for net in ("without BN", "with BN"))
    if not (baseline and batch_norm):
        return content
    notes = bn_ahead(batch_norm, baseline)
    try:  # Fig. 1 (b, c) needs the percentiles the `plot_layer` hook records
        seeds = [figures.read_seeds([run.path for run in runs]) for runs in (baseline, batch_norm)]
    except ValueError as e:
        return content._replace(notes=[*notes, f"Figure 1 not drawn: {e}"])
    counts = " and ".join(f"{len(s)} seed{'s' if len(s) != 1 else ''}" for s in seeds)
    first = sorted({next(iter(s)) for s in seeds})
    caption = (
        f"Figure 1: (a) test accuracy, the mean over the seeds ({counts}, without and with BN) and its min-max "
        "band; (b, c) the 15th, 50th and 85th percentiles of a last-hidden-layer sigmoid input over test examples, "
        f"without and with BN, of the first seed ({' and '.join(map(str, first))})"
    )
    return content._replace(figures=[Figure(caption, png(figures.plot_figure1(*seeds)))], notes=notes)


# --- Table 2 (Sec. 4.2.2): CPU scale, and ImageNet -------------------------------------------------------------

TABLE2_LABELS = {
    "inception": "Inception",
    "bn_baseline": "BN-Baseline",
    "bn_x5": "BN-x5",
    "bn_x30": "BN-x30",
    "bn_x5_sigmoid": "BN-x5-Sigmoid",
    "sigmoid": "Sigmoid (no BN)",
}
TABLE2_PAPER_COLUMNS = (f"paper: steps to {figures.TABLE2_PAPER['inception'][1]}", "paper: max accuracy")
TABLE2_CPU = tuple(
    Variant(
        TABLE2_LABELS[name],
        f"table2/{name}",
        f"python -m bnrepro.main --config=configs/fashion_table2.py:{name} --workdir={{runs}}/table2/{name}",
        figures.TABLE2_PAPER[name],
    )
    for name in figures.TABLE2_RUNS
)
TABLE2_IMAGENET = tuple(
    Variant(
        TABLE2_LABELS[name],
        f"imagenet/{name}",
        f"python -m bnrepro.main --config=configs/imagenet_{name}.py --workdir={{runs}}/imagenet/{name}",
        figures.TABLE2_PAPER[name],
    )
    for name in figures.TABLE2_RUNS
    if name != "sigmoid"  # the paper reports it in words only (chance); no config file
)


TABLE2_CAPTION = "Table 2 as the paper gives it (mean ± std over the seeds where there are several)"


def table2_cpu(root: Path) -> Content | None:
    """The variant table and curves; once all six runs exist, `figures.table2`: the paper's columns (steps to
    the Inception analogue's best, max accuracy) for ours and the paper's."""
    found = variants_content(
        root,
        TABLE2_CPU,
        "Table 2 at CPU scale: x0.125 BN-Inception on Fashion-MNIST",
        paper_columns=TABLE2_PAPER_COLUMNS,
    )
    if found is None:
        return None
    content, groups = found
    if not all(runs and (runs[0].evaluations or runs[0].diverged) for runs in groups.values()):
        return content
    paper_table = parse_markdown_table(figures.table2(root / "table2"), TABLE2_CAPTION)
    return content._replace(tables=[paper_table, *content.tables])


def table2_imagenet(root: Path) -> Content | None:
    found = variants_content(
        root,
        TABLE2_IMAGENET,
        "Table 2 on ImageNet: single-crop top-1 validation accuracy",
        paper_columns=TABLE2_PAPER_COLUMNS,
    )
    return found[0] if found else None


# --- Beyond the paper -------------------------------------------------------------------------------------------

ABLATION_DIR = "sweeps/mnist"
ABLATION_FIGURES = ("sweep_curves.png", "sweep_final.png")  # what scripts/plot_sweep.py writes into the sweep


def ablation(root: Path) -> Content | None:
    """The sweep's own summary (summary.md) and, if `scripts/plot_sweep.py` drew them, its two figures."""
    sweep = root / ABLATION_DIR
    if not (sweep / "summary.md").exists():
        return None
    table = parse_markdown_table((sweep / "summary.md").read_text(), f"{ABLATION_DIR}/summary.md: one row per point")
    drawn = [
        Figure(f"{ABLATION_DIR}/{name}", (sweep / name).read_bytes())
        for name in ABLATION_FIGURES
        if (sweep / name).exists()
    ]
    plot = f"python scripts/plot_sweep.py --sweep=configs/sweeps/mnist_activation_bn.py --workdir={sweep.as_posix()}"
    notes = [] if drawn else [f"figures: {plot}"]
    return Content(drawn, [table], notes, [], [])


ICS_DIR = "sweeps/ics"


def ics(root: Path) -> Content | None:
    """Santurkar et al.'s measurements of the sweep's runs (`figures.plot_ics`, `figures.ics_summary`, as
    `scripts/plot_ics.py` draws and prints them) for the last hidden layer, and the variant table per net."""
    sweep = root / ICS_DIR
    workdirs = sorted(p.parent for p in sweep.glob(f"*/{DIAGNOSTICS_FILE}"))
    if not workdirs:
        return None
    runs = figures.read_ics_runs(workdirs)
    last = next(iter(runs.values()))[0].diagnostics[-1]
    layer = max(key.split("/", 1)[1] for key in last if key.startswith("ics_l2/"))
    summary = figures.ics_summary(runs, layer)
    columns = tuple(summary[0])
    table = Table(
        f"Gradient propagation, layer {layer}: means over the second half of training, mean ± std over the seeds",
        columns,
        [tuple(figures.ics_cell(c, row[c]) for c in columns) for row in summary],
    )
    groups: dict[str, list[Run]] = {}
    for workdir in workdirs:
        groups.setdefault(figures.run_label(workdir), []).append(read_run(workdir))
    command = "python -m bnrepro.sweep --sweep=configs/sweeps/mnist_ics.py --workdir={runs}/" + ICS_DIR
    shown = [shown_config(root, command, members) for members in groups.values()]
    figure = Figure(
        f"Santurkar et al. (2018) Figures 3-5 for the MLP, layer {layer}: one line per net (mean over its seeds)",
        png(figures.plot_ics(runs, layer)),
    )
    return Content([figure], [table, variant_table("Test accuracy per net", groups, root)], [], shown, [])


def adabn(root: Path) -> Content | None:
    """scripts/adabn.py's table for the Figure 1 BN net: mean ± std over its adapted seeds, then each seed's."""
    adapted = [run for run in read_variant(root, "mnist_bn") if (run.path / figures.ADABN_FILE).exists()]
    if not adapted:
        return None
    tables = [
        parse_markdown_table(
            (run.path / figures.ADABN_FILE).read_text(),
            f"{run.path.relative_to(root).as_posix()} (seed {run.config.get('seed', '?')}): test "
            "accuracy with the source statistics and with AdaBN's",
        )
        for run in adapted
    ]
    if len(adapted) > 1:
        over_seeds = figures.adabn_table([figures.read_adabn(run.path) for run in adapted])
        caption = f"AdaBN over {len(adapted)} seeds of the Figure 1 BN net: test accuracy, mean ± std"
        tables.insert(0, parse_markdown_table(over_seeds, caption))
    return Content([], tables, [], [], [])


SMALL_BATCH_SWEEP = "python -m bnrepro.sweep --sweep=configs/sweeps/small_batch.py --workdir={runs}/small_batch"
SEQ_ROWS_SWEEP = "python -m bnrepro.sweep --sweep=configs/sweeps/seq_rows.py --workdir={runs}/seq"


SMALL_BATCH = (  # seed 0 of each alone: `python -m bnrepro.main --config=configs/mnist_small_batch.py:bn ...`
    Variant("BN", "small_batch/bn", SMALL_BATCH_SWEEP),
    Variant("Batch Renorm", "small_batch/renorm", SMALL_BATCH_SWEEP),
)


def small_batch(root: Path) -> Content | None:
    found = variants_content(root, SMALL_BATCH, "Batch Renormalization vs BN, mini-batches of 4")
    return found[0] if found else None


def _lstm(net: str, options: tuple[str, ...], paper: str) -> Variant:
    """A net of `configs/seq_mnist.py`, `net` with `options` (of "permuted", "rows"), into `seq/NET[_OPTION...]`."""
    name = "_".join((net, *options))
    label = f"{'BN-LSTM' if net == 'bn_lstm' else 'LSTM'}, {'permuted ' if 'permuted' in options else ''}"
    label += "rows" if "rows" in options else "pixels"
    command = f"python -m bnrepro.main --config=configs/seq_mnist.py:{','.join((net, *options))} --workdir={{runs}}/seq/{name}"
    return Variant(label, f"seq/{name}", SEQ_ROWS_SWEEP if "rows" in options else command, (paper,))


SEQUENTIAL = (
    _lstm("lstm", ("rows",), "—"),
    _lstm("bn_lstm", ("rows",), "—"),
    _lstm("lstm", ("permuted", "rows"), "—"),
    _lstm("bn_lstm", ("permuted", "rows"), "—"),
    _lstm("lstm", (), "98.9%"),
    _lstm("bn_lstm", (), "99.0%"),
    _lstm("lstm", ("permuted",), "90.2%"),
    _lstm("bn_lstm", ("permuted",), "95.4%"),
)


def sequential(root: Path) -> Content | None:
    found = variants_content(
        root,
        SEQUENTIAL,
        "LSTM vs BN-LSTM on sequential MNIST",
        paper_columns=("paper: test accuracy (pixel by pixel)",),
    )
    return found[0] if found else None


def _table2_paper() -> str:
    """Table 2's row for each net as the paper gives it: steps to Inception's best / max accuracy."""
    rows = []
    for name in figures.TABLE2_RUNS:
        steps, best = figures.TABLE2_PAPER[name]
        rows.append(f"{TABLE2_LABELS[name]} {best}" if steps == "—" else f"{TABLE2_LABELS[name]} {steps} / {best}")
    return ", ".join(rows)


def _commands(variants: Sequence[Variant]) -> str:
    return "\n".join(dict.fromkeys(variant.command for variant in variants))  # a sweep that trains several, once


EXPERIMENTS = (
    Experiment(
        "figure1",
        "Figure 1: MNIST with and without BN",
        "Sec. 4.1, Figure 1",
        "A 784-100-100-100-10 sigmoid MLP, 50,000 steps of 60 examples. (a) With BN the net reaches higher test "
        f"accuracy, faster (the text gives no number; read off the plot, BN ends at {FIGURE1[1].paper[0]}, the "
        f"baseline at {FIGURE1[0].paper[0]}). (b, c) The 15th/50th/85th percentiles of a last-hidden-layer sigmoid "
        "input: without BN they drift over training, with BN they are stable.",
        FIGURE1_COMMAND,
        figure1,
        "docs/experiments.md#figure-1",
    ),
    Experiment(
        "table2_cpu",
        "Table 2 at CPU scale (Fashion-MNIST)",
        "Sec. 4.2.2, Table 2 (scaled down)",
        f"ImageNet single-crop top-1: steps to Inception's best and each net's max accuracy. {_table2_paper()}. "
        "Here a x0.125 BN-Inception on Fashion-MNIST for 3,000 steps: compare the shape (which nets reach the "
        "baseline's best, and how soon), not the numbers.",
        "python scripts/table2.py --workdir={runs}/table2 --seeds=3",
        table2_cpu,
        "docs/experiments.md#table-2-at-cpu-scale",
    ),
    Experiment(
        "table2_imagenet",
        "Table 2 on ImageNet",
        "Sec. 4.2.2, Table 2",
        f"The paper's five runs, steps to Inception's best / max accuracy: {_table2_paper()}. Needs ImageNet and "
        "accelerators.",
        _commands(TABLE2_IMAGENET),
        table2_imagenet,
        "docs/experiments.md#table-2-on-imagenet",
    ),
    Experiment(
        "init_scale",
        "Initial weight scale: how much BN depends on it",
        "Sec. 3.3 (scale invariance)",
        '"Batch Normalization also makes training more resilient to the parameter scale": BN(Wu) = BN((aW)u), so '
        'the gradient with respect to aW is 1/a times that with respect to W, and "larger weights lead to smaller '
        'gradients, and Batch Normalization will stabilize the parameter growth". The paper shows no experiment '
        "of it.",
        claims.INIT_SCALE_COMMAND,
        claims.init_scale,
        "docs/experiments.md#initial-scale",
    ),
    Experiment(
        "regularization",
        "BN as a regularizer, with and without dropout",
        "Sec. 3.4 and Sec. 4.2.1 (remove dropout)",
        '"Batch Normalization regularizes the model": "in a batch-normalized network we found that [Dropout] can '
        'be either removed or reduced in strength" (Sec. 3.4); removing it from BN-Inception "speeds up training, '
        'without increasing overfitting" (Sec. 4.2.1). The paper isolates neither on a net that overfits.',
        claims.REGULARIZATION_COMMAND,
        claims.regularization,
        "docs/experiments.md#bn-as-a-regularizer",
    ),
    Experiment(
        "ablation",
        "Ablation sweep: activation x BN x learning rate x seed",
        "Sec. 4.2.1 (higher learning rates)",
        "BN allows higher learning rates and makes saturating nonlinearities trainable (Sec. 3.3, 4.2.1); the paper "
        "has no MNIST grid.",
        "python -m bnrepro.sweep --sweep=configs/sweeps/mnist_activation_bn.py --workdir={runs}/sweeps/mnist\n"
        "python scripts/plot_sweep.py --sweep=configs/sweeps/mnist_activation_bn.py --workdir={runs}/sweeps/mnist",
        ablation,
        "docs/experiments.md#ablation-sweep",
    ),
    Experiment(
        "ics",
        "Gradient propagation and internal covariate shift",
        "Santurkar et al. (2018), on the Figure 1 MLP",
        "Santurkar et al.: BN does not reduce internal covariate shift measured as ||G - G'||; noisy BN (random "
        "shifts and scales after BN) has more of it and trains about as well; BN makes the loss landscape smoother "
        "(loss variation, gradient predictiveness, effective beta-smoothness). The paper (Sec. 3.3) conjectures BN "
        "keeps the layer Jacobian's singular values near 1. Their numbers are for other nets.",
        "python -m bnrepro.sweep --sweep=configs/sweeps/mnist_ics.py --workdir={runs}/sweeps/ics\n"
        "python scripts/plot_ics.py {runs}/sweeps/ics --out=ics.png",
        ics,
        "docs/experiments.md#gradient-propagation",
    ),
    Experiment(
        "adabn",
        "AdaBN: BN statistics re-estimated on shifted test images",
        "Li et al. (2016); the paper's Sec. 5",
        "Sec. 5 asks whether BN helps domain adaptation; AdaBN keeps every weight and recomputes the BN statistics "
        "on the target domain. Li et al.'s numbers are for other datasets. Needs the Figure 1 BN run.",
        "python scripts/adabn.py --workdir={runs}/mnist_bn",
        adabn,
        "docs/experiments.md#adabn",
    ),
    Experiment(
        "small_batch",
        "Batch Renormalization vs BN with mini-batches of 4",
        "Ioffe (2017)",
        "Batch Renorm (r, d from the moving averages) trains better than BN with small mini-batches; Ioffe's numbers "
        "are for ImageNet and not reproduced here.",
        _commands(SMALL_BATCH),
        small_batch,
        "docs/experiments.md#batch-renormalization",
    ),
    Experiment(
        "sequential",
        "BN-LSTM vs LSTM on sequential MNIST",
        "Cooijmans et al. (2016), Sec. 5.1",
        "Test accuracy of the early-stopped model, pixel by pixel: "
        + "; ".join(f"{v.label} {v.paper[0]}" for v in SEQUENTIAL if v.paper[0] != "—")
        + ". The row-by-row variants (28 steps of 28 pixels, for a CPU) are not in the paper; the pixel-by-pixel "
        "ones are an accelerator's work.",
        _commands(SEQUENTIAL),
        sequential,
        "docs/experiments.md#bn-lstm",
    ),
)
