"""Figure 1 plotting from metrics.jsonl records."""

import json

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
