"""One results page for every experiment: `python -m bnrepro.report --runs=runs --out=runs/report.html`.

From whatever run and sweep directories exist under `--runs`, one self-contained HTML file (figures embedded,
no server: open it in a browser) and the same page in Markdown next to it (`report.md`, its figures as PNG files
beside it). For each experiment of the README's table (`experiments.EXPERIMENTS`: the paper's Figure 1 and
Table 2, then the experiments beyond it) the page shows what it reproduces and what the paper reports, the
command that makes it, its figure, its tables (one row per variant: seeds, final and best test accuracy as
mean ± std over seeds, beside the paper's numbers), and each variant's config.json, collapsed; an experiment
with no run directory yet says "not run yet — command: ..." instead.

Run directories record no commit (config.json, metrics.jsonl, sweep_status.json: `bnrepro.training.run_dir`),
so the page gives the commit of the code at the time it was built, labelled as such.

Imports no jax: it reads run directories with `bnrepro.figures` and `bnrepro.training.run_dir` only.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

from bnrepro.report.experiments import EXPERIMENTS
from bnrepro.report.page import Report, Section, html_page, markdown_page
from bnrepro.training.run_dir import write_atomically

__all__ = ["build_report", "code_version", "write_report"]
REPOSITORY = Path(__file__).resolve().parents[2]


def code_version(repository: Path = REPOSITORY) -> str:
    """The commit of `repository` now, and whether it has uncommitted changes, as the page states it."""
    try:
        head = subprocess.run(
            ["git", "-C", str(repository), "rev-parse", "HEAD"], capture_output=True, text=True, check=True, timeout=30
        ).stdout.strip()
        changes = subprocess.run(
            ["git", "-C", str(repository), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            check=True,
            timeout=30,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "code version unknown (not a git checkout); runs record no commit"
    dirty = " with uncommitted changes" if changes else ""
    return f"commit at report time: {head}{dirty} (runs record no commit)"


def build_report(runs: Path) -> Report:
    """Every experiment's section from the run directories under `runs`; one whose files cannot be read (a
    damaged metrics.jsonl, a run without the records its figure needs) says why, and the others are shown."""
    sections = []
    for experiment in EXPERIMENTS:
        command = experiment.command.format(runs=runs.as_posix())
        try:
            sections.append(Section(experiment, command, experiment.build(runs)))
        except (ValueError, FileNotFoundError) as e:
            sections.append(Section(experiment, command, None, str(e)))
    return Report(runs, code_version(), time.strftime("%Y-%m-%d %H:%M:%S"), sections)


def write_report(runs: Path, out: Path, command: str) -> tuple[Path, Path]:
    """`out` (HTML) and `out` with suffix .md (Markdown), with each figure of the Markdown page written beside it
    as `OUT-STEM_EXPERIMENT_I.png`; `command` is the one the pages say built them. Returns both paths. Each file
    is written whole (`run_dir.write_atomically`); if one cannot be, those already written are removed and the
    ValueError names `out` and why (a user's mistake, one line: `cli.user_errors_in_one_line`)."""
    if not runs.is_dir():
        raise FileNotFoundError(f"--runs={runs}: no such directory (it holds the run and sweep directories).")
    report = build_report(runs)
    markdown = out.with_suffix(".md")

    def image(section: Section, index: int) -> str:
        return f"{out.stem}_{section.experiment.key}_{index + 1}.png"

    files: dict[Path, str | bytes] = {out: html_page(report, command), markdown: markdown_page(report, command, image)}
    for section in report.sections:
        for index, figure in enumerate(section.content.figures if section.content else []):
            files[out.parent / image(section, index)] = figure.png
    written: list[Path] = []
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        for path, data in files.items():
            write_atomically(path, data)
            written.append(path)
    except OSError as e:
        for path in written:
            path.unlink(missing_ok=True)
        file = next((parent for parent in out.parents if parent.exists() and not parent.is_dir()), None)
        reason = f"{file} is not a directory" if file else e.strerror or str(e)
        raise ValueError(f"cannot write the report to {out}: {reason}") from e
    return out, markdown
