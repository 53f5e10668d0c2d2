"""The results page (`python -m bnrepro.report`): every experiment listed, not run yet with its command or with its
figure, tables and configs; the numbers those of metrics.jsonl; the same tables in HTML and Markdown; seeds as
mean ± std; a damaged run named; the CLI's errors in one line; and, if Chromium is installed, the page as a real
browser draws it. Run directories are written by hand (the report reads only their files) except in the test
that trains the two Figure 1 nets for a few steps."""

from __future__ import annotations

import base64
import html.parser
import io
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import matplotlib.image
import numpy as np
import pytest
from test_structure import heavy_modules_loaded
from training_run import small_config, train_and_evaluate

from bnrepro import figures, report
from bnrepro.report import experiments, runs
from bnrepro.sweep.status import STATUS_FILE

REPO = Path(__file__).resolve().parents[1]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


# --- Run directories written by hand ------------------------------------------------------------------------------


def write_run(path: Path, evaluations: list[dict], config: dict | None = None, status: dict | None = None) -> None:
    """A run directory as the trainer leaves it: config.json, metrics.jsonl (and a sweep's status file)."""
    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps(config or {"seed": 0, "num_steps": evaluations[-1]["step"]}))
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in evaluations))
    if status:
        (path / runs.SWEEP_STATUS_FILE).write_text(json.dumps(status))


def figure1_evaluations(accuracies: list[float], spread: float) -> list[dict]:
    """Evaluation records with Figure 1's keys, every 2000 steps; the medians move by `spread` over training."""
    rng = np.random.default_rng(int(spread * 100))
    return [
        {
            "step": 2000 * (i + 1),
            "test_accuracy": accuracy,
            "train_loss": 1.0 - accuracy,
            "p15": -1.0 - spread * i,
            "p50": spread * i,
            "p85": 1.0 + spread * i,
            "p50_units": (spread * i * rng.random(4)).tolist(),
        }
        for i, accuracy in enumerate(accuracies)
    ]


def write_figure1(root: Path, seeds: tuple[int, ...] = (0,)) -> dict[str, list[list[dict]]]:
    """Both Figure 1 nets (and their seeds, `mnist_bn_seed1`, ...); their evaluations by run name."""
    written: dict[str, list[list[dict]]] = {}
    for name, base, spread in (("mnist_baseline", 0.90, 0.5), ("mnist_bn", 0.93, 0.1)):
        for seed in seeds:
            accuracies = [base + 0.01 * i + 0.002 * seed for i in range(6)]
            evaluations = figure1_evaluations(accuracies, spread)
            write_run(
                root / (name if seed == 0 else f"{name}_seed{seed}"),
                evaluations,
                {"seed": seed, "num_steps": 12000, "model": {"batch_norm": name == "mnist_bn"}},
                {"status": "finished", "wall_seconds": 12.5 + seed},
            )
            written.setdefault(name, []).append(evaluations)
    return written


def build(root: Path, tmp_path: Path) -> tuple[str, str, Path]:
    """The HTML and Markdown pages of `root` (written to tmp_path/out), and the HTML file."""
    root.mkdir(exist_ok=True)
    html_file, markdown_file = report.write_report(root, tmp_path / "out" / "report.html", "the test's command")
    return html_file.read_text(), markdown_file.read_text(), html_file


# --- Reading the pages back ---------------------------------------------------------------------------------------

VOID = {"meta", "img", "br", "hr", "link", "input", "wbr"}


class _Checked(html.parser.HTMLParser):
    """Fails on an end tag that closes no open element; collects every table's caption and rows of cell texts."""

    def __init__(self) -> None:
        super().__init__()
        self.open: list[str] = []
        self.tables: list[tuple[str, list[tuple[str, ...]]]] = []
        self._text: list[str] | None = None
        self._row: list[str] = []

    def handle_starttag(self, tag: str, attrs: list) -> None:
        if tag not in VOID:
            self.open.append(tag)
        if tag == "table":
            self.tables.append(("", []))
        elif tag in ("td", "th", "caption"):
            self._text = []
        elif tag == "tr":
            self._row = []

    def handle_endtag(self, tag: str) -> None:
        assert self.open and self.open[-1] == tag, f"</{tag}> closes {self.open[-1:]}"
        self.open.pop()
        if tag in ("td", "th"):
            self._row.append("".join(self._text).strip())
            self._text = None
        elif tag == "caption":
            self.tables[-1] = ("".join(self._text).strip(), self.tables[-1][1])
            self._text = None
        elif tag == "tr":
            self.tables[-1][1].append(tuple(self._row))

    def handle_data(self, data: str) -> None:
        if self._text is not None:
            self._text.append(data)


def html_tables(document: str) -> dict[str, list[tuple[str, ...]]]:
    """Caption -> rows (the header first) of every table of a well-formed page; fails if it is not one."""
    assert document.startswith("<!DOCTYPE html>")
    checked = _Checked()
    checked.feed(document)
    checked.close()
    assert checked.open == [], f"unclosed: {checked.open}"
    return dict(checked.tables)


def markdown_tables(document: str) -> dict[str, list[tuple[str, ...]]]:
    """Caption (the bold line above it) -> rows (the header first) of every pipe table."""
    tables, caption, rows = {}, "", []
    for line in [*document.splitlines(), ""]:
        if line.startswith("|"):
            cells = tuple(c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", line.strip()[1:-1]))
            if not all(set(c) <= set("-") for c in cells):
                rows.append(cells)
            continue
        if rows:
            tables[caption], rows = rows, []
        if line.startswith("**") and line.endswith("**"):
            caption = line.strip("*")
    return tables


def section(document: str, key: str) -> str:
    """The HTML of one experiment's section."""
    return document.split(f'<section id="{key}">')[1].split("</section>")[0]


def embedded_pngs(html_section: str) -> list[bytes]:
    return [
        base64.b64decode(data) for data in re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', html_section)
    ]


def row(table: list[tuple[str, ...]], first: str) -> dict[str, str]:
    """The row of `table` whose first cell is `first`, by column header."""
    return dict(zip(table[0], next(r for r in table[1:] if r[0] == first)))


# --- Tests ----------------------------------------------------------------------------------------------------------


def test_an_empty_runs_directory_lists_every_experiment_as_not_run_with_its_command(tmp_path):
    root = tmp_path / "runs"
    document, markdown, _ = build(root, tmp_path)
    tables = html_tables(document)
    overview = tables["Experiments"]
    assert [r[0] for r in overview[1:]] == [e.title for e in experiments.EXPERIMENTS]
    assert {r[2] for r in overview[1:]} == {"not run yet"}
    for experiment in experiments.EXPERIMENTS:
        command = experiment.command.format(runs=root.as_posix())
        assert "not run yet — command:" in section(document, experiment.key)
        assert f"<code>{command}</code>" in section(document, experiment.key)
        assert f"<b>Details and reading:</b> <code>{experiment.details}</code>" in section(document, experiment.key)
        assert f"**Details and reading:** `{experiment.details}`" in markdown
        assert f"## {experiment.title}\n" in markdown and f"```\n{command}\n```" in markdown
    assert f"RUNS_DIR={root} bash scripts/reproduce_figure1.sh" in document
    assert f"python scripts/table2.py --workdir={root}/table2 --seeds=3" in document
    assert "commit at report time: " in document and "runs record no commit" in document
    assert "data:image/png" not in document and not list((tmp_path / "out").glob("*.png"))


def test_figure1_is_embedded_and_its_table_holds_the_numbers_of_metrics_jsonl(tmp_path):
    root = tmp_path / "runs"
    written = write_figure1(root)
    document, markdown, html_file = build(root, tmp_path)
    figure1 = section(document, "figure1")
    pngs = embedded_pngs(figure1)
    assert len(pngs) == 1  # Figure 1 (a, b, c); its panel (a) is the accuracy curves
    for data in pngs:
        assert data.startswith(PNG_SIGNATURE)
        image = matplotlib.image.imread(io.BytesIO(data), format="png")
        assert image.shape[0] > 200 and image.shape[1] > 400 and image.std() > 0.01  # drawn, not blank
    assert (
        "Figure 1: (a) test accuracy, the mean over the seeds (1 seed and 1 seed, without and with BN) and its "
        "min-max band; (b, c) the 15th, 50th and 85th percentiles"
    ) in figure1 and "of the first seed (0)" in figure1

    table = next(rows for caption, rows in html_tables(document).items() if caption.startswith("Figure 1: MNIST"))
    for name, label in (("mnist_baseline", "without BN"), ("mnist_bn", "with BN")):
        evaluations = written[name][0]
        cells = row(table, label)
        assert cells["final test accuracy"] == f"{evaluations[-1]['test_accuracy']:.2%}"
        best = max(evaluations, key=lambda r: r["test_accuracy"])
        assert cells["best test accuracy (step)"] == f"{best['test_accuracy']:.2%} ({best['step']})"
        assert cells["median drift"] == f"{figures.median_drift(evaluations):.3f}"
        assert cells["final step"] == "12000" and cells["seeds"] == "1 seed" and cells["wall time"] == "12 s"
        assert cells["run directory"] == name
    assert row(table, "with BN")["paper: test accuracy at 50k (read off Fig. 1a)"] == "≈98–99%"
    assert "BN ahead at 4 of 4 evaluations after step 5000 for every seed (seed 0)" in figure1  # steps 6000-12000
    assert "seed 0: BN ahead at 4 of 4 evaluations after step 5000" in figure1
    assert "config.json of <code>mnist_bn</code> (seed 0), made by <code>python -m bnrepro.main" in figure1
    assert "<details>" in figure1 and '"batch_norm": true' in figure1
    assert row(html_tables(document)["Experiments"], "Figure 1: MNIST with and without BN")["status"] == "run"

    # The Markdown page: the same figures as PNG files beside it, linked relatively.
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", markdown)
    assert links == ["report_figure1_1.png"]
    assert [(html_file.parent / link).read_bytes() for link in links] == pngs


def test_the_markdown_page_has_the_same_tables_row_for_row(tmp_path):
    root = tmp_path / "runs"
    write_figure1(root, seeds=(0, 1, 2))
    write_run(
        root / "small_batch" / "renorm", [{"step": 100, "test_accuracy": 0.5}, {"step": 200, "test_accuracy": 0.75}]
    )
    document, markdown, _ = build(root, tmp_path)
    in_html, in_markdown = html_tables(document), markdown_tables(markdown)
    assert in_html == in_markdown
    assert len(in_html) == 3  # the overview, Figure 1's and Batch Renorm's


def test_seeds_are_summarized_as_mean_and_std(tmp_path):
    root = tmp_path / "runs"
    written = write_figure1(root, seeds=(0, 1, 2))
    behind = written["mnist_bn"][2]  # seed 2's BN net falls behind its baseline at step 8000 (the 4th evaluation)
    behind[3]["test_accuracy"] = written["mnist_baseline"][2][3]["test_accuracy"] - 0.01
    (root / "mnist_bn_seed2" / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in behind))
    document, _, _ = build(root, tmp_path)
    table = next(rows for caption, rows in html_tables(document).items() if caption.startswith("Figure 1: MNIST"))
    cells = row(table, "with BN")
    finals = [evaluations[-1]["test_accuracy"] for evaluations in written["mnist_bn"]]
    assert cells["seeds"] == "3 seeds"
    assert cells["final test accuracy"] == f"{np.mean(finals):.2%} ± {np.std(finals, ddof=1):.2%}"
    drifts = [figures.median_drift(evaluations) for evaluations in written["mnist_bn"]]
    assert cells["median drift"] == f"{np.mean(drifts):.3f} ± {np.std(drifts, ddof=1):.3f}"
    assert cells["wall time"] == "14 ± 1 s"
    assert "BN ahead at 3 of 4 evaluations after step 5000 for every seed (seeds 0, 1, 2)" in document
    for seed, ahead in ((0, 4), (1, 4), (2, 3)):
        assert f"seed {seed}: BN ahead at {ahead} of 4 evaluations after step 5000" in document
    assert "mean over the seeds (3 seeds and 3 seeds, without and with BN)" in document
    assert "config.json of <code>mnist_bn</code> (seeds 0, 1, 2)" in document


def test_seed_directories_are_the_run_and_its_seed_suffixed_siblings(tmp_path):
    for name in ("mnist_bn", "mnist_bn_seed2", "mnist_bn,seed=1", "mnist_bn_seed10", "mnist_bn_other", "mnist_bnx"):
        (tmp_path / name).mkdir()
    assert [p.name for p in figures.seed_dirs(tmp_path, "mnist_bn")] == [
        "mnist_bn",
        "mnist_bn,seed=1",
        "mnist_bn_seed2",
        "mnist_bn_seed10",
    ]
    assert figures.seed_dirs(tmp_path, "small_batch/bn") == []


def test_beyond_the_paper_rows_show_their_runs_and_the_rest_their_commands(tmp_path):
    """Table 2 complete (with the paper's table), Batch Renorm and one BN-LSTM net run, an AdaBN table, a diverged
    run; everything else not run yet."""
    root = tmp_path / "runs"
    for index, name in enumerate(figures.TABLE2_RUNS):
        accuracies = [0.1] * 3 if name == "sigmoid" else [0.5 + 0.05 * index, 0.6 + 0.05 * index, 0.7 + 0.03 * index]
        write_run(
            root / "table2" / name, [{"step": 250 * (i + 1), "test_accuracy": a} for i, a in enumerate(accuracies)]
        )
    write_run(root / "small_batch" / "bn", [{"step": 100, "test_accuracy": 0.4}], {"seed": 0, "num_steps": 400})
    (root / "small_batch" / "bn" / "DIVERGED").write_text("diverged at step 150")
    write_run(
        root / "small_batch" / "renorm", [{"step": 100, "test_accuracy": 0.5}, {"step": 200, "test_accuracy": 0.75}]
    )
    write_run(root / "seq" / "bn_lstm_rows", [{"step": 250, "test_accuracy": 0.877}], {"seed": 0, "num_steps": 3000})
    adabn_seeds = {
        0: {"none": (0.98, 0.979), "noisy": (0.75, 0.915)},
        1: {"none": (0.975, 0.981), "noisy": (0.81, 0.92)},
    }
    for seed, result in adabn_seeds.items():
        workdir = root / ("mnist_bn" if seed == 0 else f"mnist_bn_seed{seed}")
        write_run(workdir, figure1_evaluations([0.9, 0.95], 0.1), {"seed": seed, "num_steps": 4000})
        (workdir / figures.ADABN_FILE).write_text(figures.adabn_markdown(result) + "\n")
    document, markdown, _ = build(root, tmp_path)
    tables = html_tables(document)

    table2 = tables[experiments.TABLE2_CAPTION]
    assert table2 == markdown_tables(figures.table2(root / "table2"))[""]
    variants = tables["Table 2 at CPU scale: x0.125 BN-Inception on Fashion-MNIST"]
    assert row(variants, "BN-x5")["paper: steps to 72.2%"] == "2.1e6" and row(variants, "BN-x5")["seeds"] == "1 seed"
    assert len(embedded_pngs(section(document, "table2_cpu"))) == 1

    small = tables["Batch Renormalization vs BN, mini-batches of 4"]
    assert row(small, "Batch Renorm")["final test accuracy"] == "75.00%"
    assert row(small, "BN")["seeds"] == "1 seed (diverged)" and row(small, "BN")["final test accuracy"] == "—"

    sequential = tables["LSTM vs BN-LSTM on sequential MNIST"]
    assert row(sequential, "BN-LSTM, rows")["seeds"] == "1 seed (unfinished (step 250 of 3000))"
    assert row(sequential, "LSTM, pixels")["seeds"] == "not run yet"
    assert row(sequential, "BN-LSTM, permuted pixels")["paper: test accuracy (pixel by pixel)"] == "95.4%"
    assert (
        "LSTM, rows: not run yet — command:</span> <code>python -m bnrepro.sweep "
        f"--sweep=configs/sweeps/seq_rows.py --workdir={root}/seq</code>"
    ) in document
    assert (
        "LSTM, pixels: not run yet — command:</span> <code>python -m bnrepro.main "
        f"--config=configs/seq_mnist.py:lstm --workdir={root}/seq/lstm</code>"
    ) in document

    adabn = next(rows for caption, rows in tables.items() if caption.startswith("mnist_bn (seed 0)"))
    assert row(adabn, "none") == {
        "test images": "none",
        "source statistics": "98.00%",
        "AdaBN": "97.90%",
        "change": "-0.10",
    }
    over_seeds = tables["AdaBN over 2 seeds of the Figure 1 BN net: test accuracy, mean ± std"]
    source, adapted = np.array([adabn_seeds[s]["noisy"] for s in (0, 1)]).T
    change = 100 * (adapted - source)
    assert row(over_seeds, "noisy") == {
        "test images": "noisy",
        "seeds": "2",
        "source statistics": f"{source.mean():.2%} ± {source.std(ddof=1):.2%}",
        "AdaBN": f"{adapted.mean():.2%} ± {adapted.std(ddof=1):.2%}",
        "change (points)": f"{change.mean():+.2f} ± {change.std(ddof=1):.2f}",
    }
    statuses = {r[0]: r[2] for r in tables["Experiments"][1:]}
    assert statuses["Table 2 at CPU scale (Fashion-MNIST)"] == "run"
    assert statuses["Gradient propagation and internal covariate shift"] == "not run yet"
    assert statuses["BN-LSTM vs LSTM on sequential MNIST"].startswith("partly run (not run yet: LSTM, rows, ")
    assert "not run yet — command:" in section(document, "ics") and tables == markdown_tables(markdown)


def ics_run(path: Path, activation: str, batch_norm: bool, noisy: bool, seed: int) -> None:
    """A run of configs/mnist_ics.py as the diagnostics hook leaves it: diagnostics.jsonl beside the metrics."""
    layers = ("DenseBN_0", "DenseBN_1")
    bn = {"noise_shift": 0.5 if noisy else 0.0, "noise_scale": 1.0}
    config = {"seed": seed, "num_steps": 400, "model": {"activation": activation, "batch_norm": batch_norm, "bn": bn}}
    write_run(path, [{"step": s, "test_accuracy": 0.8 + s / 4000 + seed / 100} for s in (200, 400)], config)
    records = []
    for step in (100, 200, 300, 400):
        record = {
            "step": step,
            "landscape/loss_variation": 0.1 * step,
            "landscape/gradient_predictiveness": 0.2,
            "landscape/beta_smoothness": 3.0,
        }
        for layer in layers:
            record.update(
                {
                    f"ics_l2/{layer}": 0.05 + seed,
                    f"ics_cosine/{layer}": 0.9,
                    f"grad_norm/{layer}": 0.1,
                    f"jacobian_sv_mean/{layer}": 0.5,
                    f"jacobian_sv/{layer}": [1.0, 0.5, 0.1],
                }
            )
        records.append(record)
    (path / "diagnostics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))


def test_the_ics_sweep_shows_santurkar_et_al_figure_and_tables(tmp_path):
    root = tmp_path / "runs"
    for activation in ("sigmoid", "relu"):
        for batch_norm, noisy in ((False, False), (True, False), (True, True)):
            for seed in (0, 1):
                ics_run(
                    root / "sweeps" / "ics" / f"{activation},{batch_norm},{noisy},seed={seed}",
                    activation,
                    batch_norm,
                    noisy,
                    seed,
                )
    document, _, _ = build(root, tmp_path)
    ics = section(document, "ics")
    assert len(embedded_pngs(ics)) == 1 and "layer DenseBN_1" in ics
    tables = html_tables(document)
    summary = tables[
        "Gradient propagation, layer DenseBN_1: means over the second half of training, mean ± std over the seeds"
    ]
    noisy = row(summary, "relu, noisy BN")
    # ics_run's seeds: ICS 0.05 + seed at every step; loss variation 0.1 * step, steps 300 and 400 in the second half
    assert noisy["seeds"] == "2" and noisy["ics_l2"] == f"{0.55:.3g} ± {np.std([0.05, 1.05], ddof=1):.3g}"
    assert noisy["loss_variation"] == f"{35.0:.3g}" + f" ± {0.0:.3g}" and noisy["ics_cosine"] == "0.9 ± 0"
    assert noisy["final_accuracy"] == f"{0.905:.2%} ± {np.std([0.9, 0.91], ddof=1):.2%}"
    per_net = tables["Test accuracy per net"]
    assert row(per_net, "sigmoid, BN")["final test accuracy"] == f"{0.905:.2%} ± {np.std([0.9, 0.91], ddof=1):.2%}"
    assert ics.count("<details>") == 6  # one config per net


@pytest.mark.parametrize(
    ("line", "named"),
    [
        ("not json", r"line 2: not a JSON record \(Expecting value\); the file is damaged\."),
        (
            '{"step": 2, "test_accuracy": "oops' + "!" * 60 + '"}',
            r"line 2: 'test_accuracy' is 'oops!+\.\.\.!+', not a number; the file is damaged\.",
        ),
    ],
    ids=["not JSON", "a string for a number"],
)
def test_a_damaged_run_is_named_and_the_other_experiments_are_shown(tmp_path, line, named):
    """A line that is not JSON, or a record holding a string where a number belongs: the experiment names the file,
    line, key and value (shortened), and the others are shown; a diverging run's NaN is a number (the page prints
    nan%)."""
    root = tmp_path / "runs"
    write_figure1(root)
    (root / "small_batch" / "bn").mkdir(parents=True)
    (root / "small_batch" / "bn" / "metrics.jsonl").write_text('{"step": 1, "test_accuracy": 0.5}\n' + line + "\n")
    write_run(
        root / "seq" / "lstm_rows", [{"step": 100, "test_accuracy": 0.5}, {"step": 200, "test_accuracy": float("nan")}]
    )
    document, markdown, _ = build(root, tmp_path)
    named = re.escape(f"{root}/small_batch/bn/metrics.jsonl, ") + named
    assert re.search("Its runs could not be read: " + named, html.unescape(section(document, "small_batch")))
    assert re.search(re.escape("**Its runs could not be read:** ") + named, markdown)
    statuses = {r[0]: r[2] for r in html_tables(document)["Experiments"][1:]}
    assert statuses["Batch Renormalization vs BN with mini-batches of 4"] == "could not be read"
    assert statuses["Figure 1: MNIST with and without BN"] == "run"
    assert len(embedded_pngs(section(document, "figure1"))) == 1
    sequential = html_tables(document)["LSTM vs BN-LSTM on sequential MNIST"]
    assert row(sequential, "LSTM, rows")["final test accuracy"] == "nan%"


def test_records_the_page_cannot_use_are_named_by_file_line_key_and_value(tmp_path):
    for text, named in (
        ('{"step": 1, "p50_units": [0.5, null]}', "line 1: 'p50_units' is [0.5, None], not a list of numbers"),
        ('{"step": true, "test_accuracy": 0.5}', "line 1: 'step' is True, not a number"),
        ('{"test_accuracy": 0.5}', "line 1: the record has no 'step'"),
        ("[1, 2]", "line 1: [1, 2] is not a JSON object"),
    ):
        (tmp_path / "metrics.jsonl").write_text(text + "\n")
        with pytest.raises(ValueError, match=re.escape(f"{tmp_path / 'metrics.jsonl'}, {named}")):
            runs.read_run(tmp_path)
    (tmp_path / "metrics.jsonl").write_text('{"step": 1, "test_accuracy": -Infinity, "p50_units": [[NaN, 1]]}\n')
    assert runs.read_run(tmp_path).evaluations[0]["test_accuracy"] == -np.inf


def test_the_sweep_status_file_is_the_sweeps():
    assert runs.SWEEP_STATUS_FILE == STATUS_FILE


def test_the_report_loads_no_jax():
    assert heavy_modules_loaded("import bnrepro.report") == []


def test_the_cli_writes_both_pages_and_refuses_a_missing_runs_directory(tmp_path):
    (tmp_path / "runs").mkdir()
    command = [sys.executable, "-m", "bnrepro.report", f"--runs={tmp_path / 'runs'}", f"--out={tmp_path / 'r.html'}"]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    assert (tmp_path / "r.html").exists() and (tmp_path / "r.md").exists()
    assert f"open {(tmp_path / 'r.html').as_uri()}" in done.stdout

    command[3] = f"--runs={tmp_path / 'missing'}"
    missing = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=120, check=False)
    assert missing.returncode == 2
    expected = f"error: --runs={tmp_path / 'missing'}: no such directory (it holds the run and sweep directories)."
    assert missing.stderr.strip().splitlines() == [expected]

    (tmp_path / "a_file").write_text("")  # its parent a file: no one can write there, root included
    command[3:] = [f"--runs={tmp_path / 'runs'}", f"--out={tmp_path / 'a_file' / 'report.html'}"]
    unwritable = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=120, check=False)
    assert unwritable.returncode == 2
    expected = f"error: cannot write the report to {tmp_path / 'a_file' / 'report.html'}: {tmp_path / 'a_file'} is "
    assert unwritable.stderr.strip().splitlines() == [expected + "not a directory"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file", "r.html", "r.md", "runs"]


def test_a_report_that_cannot_be_written_leaves_no_file(tmp_path):
    """The figure's name taken by a directory: the two pages, written before it, are removed again."""
    root = tmp_path / "runs"
    write_run(root / "small_batch" / "renorm", [{"step": 100, "test_accuracy": 0.5}])
    (tmp_path / "out" / "report_small_batch_1.png").mkdir(parents=True)
    expected = f"cannot write the report to {tmp_path / 'out' / 'report.html'}: Is a directory"
    with pytest.raises(ValueError, match=re.escape(expected)):
        report.write_report(root, tmp_path / "out" / "report.html", "the test's command")
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["report_small_batch_1.png"]


def test_real_figure1_runs_fill_the_page(small_fake_mnist, tmp_path):
    """The two Figure 1 nets trained for 60 steps by the real loop: the page reads what the trainer writes."""
    root = tmp_path / "runs"
    for variant, name in (("baseline", "mnist_baseline"), ("bn", "mnist_bn")):
        train_and_evaluate(small_config(variant, data_dir=str(small_fake_mnist)), root / name)
    document, _, _ = build(root, tmp_path)
    table = next(rows for caption, rows in html_tables(document).items() if caption.startswith("Figure 1: MNIST"))
    for name, label in (("mnist_baseline", "without BN"), ("mnist_bn", "with BN")):
        last = figures.read_evaluations(root / name)[-1]
        assert row(table, label)["final test accuracy"] == f"{last['test_accuracy']:.2%}"
        assert row(table, label)["final step"] == "60" and row(table, label)["seeds"] == "1 seed"
    assert len(embedded_pngs(section(document, "figure1"))) == 1


@pytest.mark.slow
@pytest.mark.skipif(
    shutil.which("chromium") is None,
    reason="needs Debian's chromium on PATH: apt-get update && apt-get install -y chromium (.ci/run does it)",
)
def test_a_headless_browser_draws_the_page(tmp_path):
    root = tmp_path / "runs"
    write_figure1(root)
    _, _, html_file = build(root, tmp_path)
    screenshot = tmp_path / "screenshot.png"
    subprocess.run(
        [
            "chromium",
            "--headless",
            "--disable-gpu",
            "--no-sandbox",
            f"--screenshot={screenshot}",
            "--window-size=1280,2400",
            html_file.as_uri(),
        ],
        capture_output=True,
        timeout=120,
        check=True,
    )
    data = screenshot.read_bytes()
    assert data.startswith(PNG_SIGNATURE)
    image = matplotlib.image.imread(io.BytesIO(data), format="png")
    assert image.shape[:2] == (2400, 1280)
    colours = np.unique(image.reshape(-1, image.shape[-1])[::97], axis=0)
    assert len(colours) > 50  # text, tables and the embedded figure: not one colour


def claims_run(root: Path, name: str, model: dict, accuracies: list[float], seed: int, **extra) -> Path:
    """A point of the initial-scale or regularization sweep as its hooks leave it; `extra`: per-evaluation keys
    (e.g. train_accuracy) or `weight_norm`, the middle layer's ||W|| at the end."""
    norm = extra.pop("weight_norm", None)
    config = {"seed": seed, "num_steps": 200 * len(accuracies), "eval_train_examples": 5000,
              "model": {"hidden": [100, 100, 100], "activation": "sigmoid", "dropout_rate": 0.0, **model}}  # fmt: skip
    evaluations = [
        {"step": 200 * (i + 1), "test_accuracy": a, **{k: v[i] for k, v in extra.items()}}
        for i, a in enumerate(accuracies)
    ]
    write_run(root / name, evaluations, config)
    if norm is not None:
        (root / name / "weight_norms.jsonl").write_text(json.dumps({"step": 400, "DenseBN_1/Dense_0": norm}) + "\n")
    return root / name


def test_the_initial_scale_sweep_shows_accuracy_against_scale_and_weight_growth(tmp_path):
    root = tmp_path / "runs"
    sweep = root / "sweeps" / "init_scale"
    for seed, (high, grown) in enumerate(((0.92, 3.0), (0.94, 5.0))):  # init_std 0.01: ||W|| starts at 1.0
        claims_run(sweep, f"bn,0.01,{seed}", {"batch_norm": True, "init_std": 0.01}, [0.8, high], seed,
                   weight_norm=grown)  # fmt: skip
        claims_run(sweep, f"nobn,0.01,{seed}", {"batch_norm": False, "init_std": 0.01}, [0.1, 0.1], seed,
                   weight_norm=1.0)  # fmt: skip
    claims_run(sweep, "nobn,1,0", {"batch_norm": False, "init_std": 1.0}, [0.5, 0.85], 0, weight_norm=100.0)
    (claims_run(sweep, "nobn,1,1", {"batch_norm": False, "init_std": 1.0}, [0.5], 1) / "DIVERGED").write_text("x")
    claims_run(sweep, "nobn,1,0.old-1", {"batch_norm": False, "init_std": 1.0}, [0.0, 0.0], 0)  # set aside: not read
    document, _, _ = build(root, tmp_path)
    page = section(document, "init_scale")
    assert len(embedded_pngs(page)) == 1 and "1 of 6 runs diverged (left out of the means)" in page
    (table,) = [t for caption, t in html_tables(document).items() if caption.startswith("Initial scale, 400 steps")]
    rows = {(r[0], r[1]): dict(zip(table[0], r)) for r in table[1:]}
    bn = rows[("sigmoid, BN", "0.01")]
    assert bn["final test accuracy"] == f"{0.93:.2%} ± {np.std([0.92, 0.94], ddof=1):.2%}"
    assert bn["steps to 90%"] == "400 ± 0" and bn["||W|| of DenseBN_1/Dense_0, end / start"] == "4.00 ± 1.41"
    assert rows[("sigmoid, no BN", "0.01")]["steps to 90%"] == "— (0 of 2 reach it)"
    large = rows[("sigmoid, no BN", "1")]
    assert large["seeds"] == "2 seeds (diverged)" and large["final test accuracy"] == "85.00%"
    assert large["||W|| of DenseBN_1/Dense_0, end / start"] == "1.00"  # 100 / (1.0 * sqrt(100 * 100))
    assert page.count("<details>") == 2  # one config per net


def test_the_regularization_sweep_shows_train_and_test_accuracy_and_their_gap(tmp_path):
    root = tmp_path / "runs"
    sweep = root / "sweeps" / "regularization"
    for seed in (0, 1):
        for batch_norm in (True, False):
            for rate in (0.0, 0.5):
                test = 0.92 + 0.01 * seed + 0.02 * rate
                claims_run(sweep, f"{batch_norm},{rate},{seed}", {"batch_norm": batch_norm, "dropout_rate": rate},
                           [0.9, test], seed, train_accuracy=[0.95, 1.0 - 0.02 * rate])  # fmt: skip
    document, _, _ = build(root, tmp_path)
    page = section(document, "regularization")
    assert len(embedded_pngs(page)) == 1
    table = html_tables(document)[
        "BN and dropout on 5,000 training examples, 400 steps: final accuracies, mean ± std over the seeds"
    ]
    assert [r[0] for r in table[1:]] == ["BN, no dropout", "BN, dropout 0.5", "no BN, no dropout", "no BN, dropout 0.5"]
    dropout = row(table, "no BN, dropout 0.5")
    std = f"{np.std([0.93, 0.94], ddof=1):.2%}"
    assert dropout["train accuracy"] == "99.00% ± 0.00%" and dropout["test accuracy"] == f"{0.935:.2%} ± {std}"
    assert dropout["gap (train − test)"] == f"{0.99 - 0.935:.2%} ± {std}" and dropout["steps to 90%"] == "200 ± 0"
