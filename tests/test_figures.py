"""Figure 1 plotting from metrics.jsonl records."""

import json
from pathlib import Path

import pytest

from bnrepro import figures


def _write_run(path, medians_per_eval):
    with open(path / "metrics.jsonl", "w") as f:
        f.write(json.dumps({"step": 5, "train_loss": 1.0}) + "\n")  # a training record: ignored
        f.writelines(
            json.dumps(
                {
                    "step": 100 * (i + 1),
                    "test_accuracy": 0.8 + 0.05 * i,
                    "train_loss": 0.5,
                    "p15": -1.0 - i,
                    "p50": medians[0],
                    "p85": 1.0 + i,
                    "p50_units": medians,
                }
            )
            + "\n"
            for i, medians in enumerate(medians_per_eval)
        )


def test_median_drift_is_the_mean_over_units_of_each_median_range(tmp_path):
    _write_run(tmp_path, [[0.0, 1.0], [0.5, -1.0], [0.2, 0.0]])
    records = figures.read_evaluations(tmp_path)
    assert [r["step"] for r in records] == [100, 200, 300]
    assert figures.median_drift(records) == pytest.approx(((0.5 - 0.0) + (1.0 - -1.0)) / 2)


def test_plot_figure1_writes_three_panels(tmp_path):
    _write_run(tmp_path, [[0.0, 1.0], [0.5, -1.0]])
    records = figures.read_evaluations(tmp_path)
    fig = figures.plot_figure1(records, records)
    assert len(fig.axes) == 3
    fig.savefig(tmp_path / "figure1.png")
    assert (tmp_path / "figure1.png").stat().st_size > 10_000


def test_missing_or_incomplete_metrics_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="metrics.jsonl does not exist"):
        figures.read_evaluations(tmp_path)
    (tmp_path / "metrics.jsonl").write_text(json.dumps({"step": 1, "test_accuracy": 0.5}) + "\n")
    with pytest.raises(ValueError, match="lack"):
        figures.read_evaluations(tmp_path)


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
