"""Figure 1 from metrics.jsonl records: the drift, the seeds read by the seed their config records, panel (a)'s
mean and min-max band and the table's mean ± std against NumPy, and the count of evaluations at which BN is ahead
for every seed against a hand count; the plotting script on run directories laid out as the sweep writes them."""

import json
import subprocess
import sys
from pathlib import Path

import matplotlib.collections
import numpy as np
import pytest

from bnrepro import figures

REPO = Path(__file__).resolve().parents[1]


def _write_run(path, medians_per_eval, seed=0, accuracies=None, steps=None):
    """A run directory: config.json with `seed`, and an evaluation record per entry of `medians_per_eval` (each
    unit's median input), at `steps` (default 100, 200, ...) with `accuracies` (default 0.8, 0.85, ...)."""
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps({"seed": seed}))
    steps = steps or [100 * (i + 1) for i in range(len(medians_per_eval))]
    accuracies = accuracies or [0.8 + 0.05 * i for i in range(len(medians_per_eval))]
    with open(path / "metrics.jsonl", "w") as f:
        f.write(json.dumps({"step": 5, "train_loss": 1.0}) + "\n")  # a training record: ignored
        f.writelines(
            json.dumps(
                {
                    "step": step,
                    "test_accuracy": accuracy,
                    "train_loss": 0.5,
                    "p15": -1.0 - i,
                    "p50": medians[0],
                    "p85": 1.0 + i,
                    "p50_units": medians,
                }
            )
            + "\n"
            for i, (step, accuracy, medians) in enumerate(zip(steps, accuracies, medians_per_eval))
        )


def test_median_drift_is_the_mean_over_units_of_each_median_range(tmp_path):
    _write_run(tmp_path, [[0.0, 1.0], [0.5, -1.0], [0.2, 0.0]])
    records = figures.read_evaluations(tmp_path)
    assert [r["step"] for r in records] == [100, 200, 300]
    assert figures.median_drift(records) == pytest.approx(((0.5 - 0.0) + (1.0 - -1.0)) / 2)


def test_missing_or_incomplete_metrics_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="metrics.jsonl does not exist"):
        figures.read_evaluations(tmp_path)
    (tmp_path / "metrics.jsonl").write_text(json.dumps({"step": 1, "test_accuracy": 0.5}) + "\n")
    with pytest.raises(ValueError, match="lack"):
        figures.read_evaluations(tmp_path)


# Three seeds of a net, by seed: accuracy at steps 100-400 (seed 1 missed the evaluation at step 300).
ACCURACIES = {0: [0.80, 0.90, 0.93, 0.95], 1: [0.82, 0.88, None, 0.96], 2: [0.78, 0.91, 0.92, 0.94]}


def _write_seeds(root: Path) -> list[Path]:
    """ACCURACIES in directories whose names are not in seed order; returns them in the order listed."""
    workdirs = []
    for name, seed in (("c", 2), ("a", 0), ("b", 1)):
        kept = [(100 * (i + 1), a) for i, a in enumerate(ACCURACIES[seed]) if a is not None]
        medians = [[0.1 * seed * i, -0.2 * i] for i in range(len(kept))]
        _write_run(root / name, medians, seed, [a for _, a in kept], [s for s, _ in kept])
        workdirs.append(root / name)
    return workdirs


def test_seeds_are_keyed_by_their_config_and_aligned_on_the_steps_all_of_them_evaluated(tmp_path):
    seeds = figures.read_seeds(_write_seeds(tmp_path))
    assert list(seeds) == [0, 1, 2]
    steps, accuracy = figures.seed_curves(seeds, "test_accuracy")
    assert steps.tolist() == [100, 200, 400]
    expected = [[ACCURACIES[seed][i] for i in (0, 1, 3)] for seed in (0, 1, 2)]
    np.testing.assert_array_equal(accuracy, expected)

    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "config.json").write_text(json.dumps({"seed": 1}))
    with pytest.raises(ValueError, match=r"b and .*d are both runs of seed 1"):
        figures.read_seeds([tmp_path / "b", tmp_path / "d"])
    (tmp_path / "e").mkdir()
    with pytest.raises(ValueError, match="config.json does not exist or records no seed"):
        figures.read_seeds([tmp_path / "e"])


def test_panel_a_is_the_mean_over_seeds_in_its_min_max_band_and_b_c_the_first_seed(tmp_path):
    seeds = figures.read_seeds(_write_seeds(tmp_path))
    fig = figures.plot_figure1(seeds, seeds)
    assert len(fig.axes) == 3 and len(fig.axes[0].child_axes) == 1  # (a) with its enlarged inset, (b), (c)
    reference = np.asarray([[ACCURACIES[seed][i] for i in (0, 1, 3)] for seed in (0, 1, 2)])
    (band, *_), (line, *_) = fig.axes[0].collections, fig.axes[0].lines
    assert isinstance(band, matplotlib.collections.PolyCollection)
    np.testing.assert_array_equal(line.get_xdata(), [100, 200, 400])
    np.testing.assert_allclose(line.get_ydata(), np.mean(reference, axis=0))
    vertices = band.get_paths()[0].vertices
    for step, low, high in zip((100, 200, 400), reference.min(0), reference.max(0)):
        at_step = vertices[vertices[:, 0] == step, 1]
        np.testing.assert_allclose([at_step.min(), at_step.max()], [low, high])
    legend = [text.get_text() for text in fig.axes[0].get_legend().get_texts()]
    assert legend == ["Without BN: mean, min-max of 3 seeds", "With BN: mean, min-max of 3 seeds"]
    drift = np.mean([0.0, 0.6])  # seed 0: unit 0's medians are 0 throughout, unit 1's go from 0 to -0.6
    assert [ax.get_title() for ax in fig.axes[1:3]] == [
        f"(b) without BN, seed 0: drift {drift:.2f}",
        f"(c) with BN, seed 0: drift {drift:.2f}",
    ]
    np.testing.assert_array_equal(fig.axes[1].lines[1].get_ydata(), [0.0, 0.0, 0.0, 0.0])  # seed 0's p50

    one = figures.plot_figure1({0: seeds[0]}, {0: seeds[0]})  # a run made before there were seeds
    assert one.axes[0].get_legend().get_texts()[0].get_text() == "Without BN: mean, min-max of seed 0"
    one.savefig(tmp_path / "figure1.png")
    assert (tmp_path / "figure1.png").stat().st_size > 10_000


def _records(accuracies: list[float]) -> list[dict]:
    return [{"step": 1000 * (i + 1), "test_accuracy": a} for i, a in enumerate(accuracies)]


def test_bn_is_ahead_where_it_leads_the_baseline_of_the_same_seed_for_every_seed():
    # Steps 1000-8000; the evaluations compared are those after 5000: 6000, 7000, 8000.
    baseline = {  # inserted in reverse: pairing is by seed, not by position
        1: _records([0.5, 0.6, 0.7, 0.8, 0.90, 0.950, 0.960, 0.970]),
        0: _records([0.5, 0.6, 0.7, 0.8, 0.85, 0.900, 0.910, 0.920]),
    }
    batch_norm = {
        0: _records([0.9, 0.9, 0.9, 0.9, 0.80, 0.930, 0.930, 0.930]),  # ahead of its baseline at 6000-8000
        1: _records([0.9, 0.9, 0.9, 0.9, 0.80, 0.951, 0.950, 0.970]),  # ahead at 6000, behind at 7000, tied at 8000
        2: _records([0.1] * 8),  # no baseline of seed 2: not compared
    }
    # By hand: only step 6000 has every seed's BN net strictly above its baseline.
    assert figures.bn_ahead(baseline, batch_norm) == (1, 3)
    reference = [
        all(batch_norm[seed][i]["test_accuracy"] > baseline[seed][i]["test_accuracy"] for seed in (0, 1))
        for i in range(8)
        if baseline[0][i]["step"] > figures.AHEAD_AFTER
    ]
    assert figures.bn_ahead(baseline, batch_norm) == (sum(reference), len(reference))
    assert figures.bn_ahead(baseline, batch_norm, after=0) == (5, 8)  # 1000-4000 too; at 5000 both BN nets behind
    assert figures.bn_ahead({0: baseline[0]}, {0: batch_norm[0]}) == (3, 3)
    with pytest.raises(ValueError, match="no seed trained both"):
        figures.bn_ahead({0: baseline[0]}, {2: batch_norm[2]})


def test_the_table_gives_mean_and_sample_std_over_seeds_and_the_count_ahead(tmp_path):
    seeds = figures.read_seeds(_write_seeds(tmp_path))
    worse = {
        seed: [{**r, "test_accuracy": r["test_accuracy"] - 0.1} for r in records] for seed, records in seeds.items()
    }
    table = figures.figure1_table(worse, seeds)
    rows = [line.strip("|").split(" | ") for line in table.splitlines()[2:4]]
    finals = np.asarray([ACCURACIES[seed][-1] for seed in (0, 1, 2)])
    drifts = np.asarray([np.mean([0.1 * seed * 3, 0.2 * 3]) for seed in (0, 1, 2)])  # 4 evaluations (3 for seed 1)
    drifts[1] = np.mean([0.1 * 1 * 2, 0.2 * 2])
    for row, name, accuracies in ((rows[0], "without BN", finals - 0.1), (rows[1], "with BN", finals)):
        assert [cell.strip() for cell in row] == [
            name,
            "3",
            "400",
            f"{100 * np.mean(accuracies):.2f}% ± {100 * np.std(accuracies, ddof=1):.2f}%",
            f"{np.mean(drifts):.3f} ± {np.std(drifts, ddof=1):.3f}",
        ]
    # Its evaluations (steps 100-400) all precede step 5000: none is compared (bn_ahead's own test counts them).
    assert table.splitlines()[-1].startswith("BN ahead at 0 of 0 evaluations after step 5000 for every seed")


def test_the_script_draws_the_sweeps_layout_and_prints_the_table(tmp_path):
    """Seed 0 in runs/mnist_VARIANT, seed N in runs/mnist_VARIANT_seedN (configs/sweeps/figure1.py)."""
    runs = tmp_path / "runs"
    for name, offset in (("mnist_baseline", 0.0), ("mnist_bn", 0.02)):
        for seed in (0, 1):
            steps = [2000 * (i + 1) for i in range(5)]
            accuracies = [0.9 + offset + 0.01 * i - 0.005 * seed for i in range(5)]
            medians = [[0.1 * i * (1 + seed)] for i in range(5)]
            _write_run(runs / (name if seed == 0 else f"{name}_seed{seed}"), medians, seed, accuracies, steps)
    (runs / "mnist_bnx").mkdir()  # not a seed of mnist_bn
    command = [sys.executable, "scripts/plot_figure1.py", f"--baseline={runs / 'mnist_baseline'}",
               f"--bn={runs / 'mnist_bn'}", f"--out={tmp_path / 'figure1.png'}"]  # fmt: skip
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    both = [figures.read_seeds([runs / name, runs / f"{name}_seed1"]) for name in ("mnist_baseline", "mnist_bn")]
    assert done.stdout == figures.figure1_table(*both) + f"\nwrote {tmp_path / 'figure1.png'}\n"
    assert "| with BN | 2 | 10000 |" in done.stdout
    assert "BN ahead at 3 of 3 evaluations after step 5000 for every seed" in done.stdout  # 6000, 8000, 10000
    assert (tmp_path / "figure1.png").stat().st_size > 10_000

    command[3] = f"--bn={tmp_path / 'elsewhere' / 'mnist_bn'}"
    missing = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=120, check=False)
    assert missing.returncode != 0 and "no run directory there, nor its seeds' mnist_bn_seedN" in missing.stderr


def test_sweep_plots_draw_every_point_and_mark_the_diverged():
    rows, curves = [], []
    for activation in ("sigmoid", "relu"):
        for batch_norm in (True, False):
            for lr in (0.1, 3.0):
                diverged = activation == "relu" and not batch_norm and lr == 3.0
                rows.append({"model.activation": activation, "model.batch_norm": batch_norm, "learning_rate": lr,
                             "status": "diverged" if diverged else "finished", "final_accuracy": None if diverged
                             else 0.9})  # fmt: skip
                curves.append(
                    [] if diverged else [{"step": 100, "test_accuracy": 0.5}, {"step": 200, "test_accuracy": 0.9}]
                )
    fig = figures.plot_sweep_curves(rows, curves)
    assert len(fig.axes) == 4
    assert sum(len(ax.lines) for ax in fig.axes) == 8 + 1  # a line per point, and the diverged point's cross
    final = figures.plot_sweep_final(rows)
    crosses = [line for line in final.axes[0].lines if line.get_label() == "diverged / failed"]
    assert len(crosses) == 1 and list(crosses[0].get_xdata()) == [3.0]


@pytest.mark.parametrize(
    ("model", "label"),
    [
        ({"activation": "relu", "batch_norm": True, "bn": {"noise_shift": 0.1, "noise_scale": 1.0}}, "relu, noisy BN"),
        ({"activation": "relu", "batch_norm": True, "bn": {"noise_shift": 0.0, "noise_scale": 1.0}}, "relu, BN"),
        (
            {"activation": "sigmoid", "batch_norm": False, "bn": {"noise_shift": 0.0, "noise_scale": 1.0}},
            "sigmoid, no BN",
        ),
        (
            {"activation": "sigmoid", "batch_norm": True, "bn_noise_shift": 0.0, "bn_noise_scale": 1.5},
            "sigmoid, noisy BN",
        ),
    ],
    ids=["noisy", "bn", "none", "before_model_bn"],
)
def test_run_label_reads_the_bn_sub_config_and_older_runs(tmp_path: Path, model: dict, label: str) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"model": model}))
    assert figures.run_label(tmp_path) == label
