"""What the results page reads from run directories, and the tables it makes of them.

A variant of an experiment (Figure 1's BN net, Table 2's BN-x5, ...) is one run directory under `--runs`, plus
its seeds: sibling directories named after it with a seed suffix (`mnist_bn_seed1`, `mnist_bn,seed=1`;
`seed_dirs`). Each table row summarizes all of a variant's runs: mean ± sample std over seeds, and the number of
seeds. Everything here reads the files `bnrepro.training.run_dir` names; no jax.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

from bnrepro.figures import mean_std, seed_dirs
from bnrepro.training.run_dir import CONFIG_FILE, DIVERGED_FILE, METRICS_FILE, SWEEP_STATUS_FILE, read_records

NOT_RUN = "not run yet"


class Run(NamedTuple):
    """One run directory as the page shows it."""

    path: Path
    evaluations: list[dict[str, Any]]  # the metrics.jsonl records with test_accuracy, by step
    config: dict[str, Any]  # config.json; {} if the run wrote none
    status: str  # finished, diverged, failed, or unfinished (step S of N)
    wall_seconds: float | None  # from sweep_status.json: the wall time of the sweep group that trained it

    @property
    def diverged(self) -> bool:
        return self.status == "diverged"


class Table(NamedTuple):
    """A table of formatted cells: what both the HTML and the Markdown page print."""

    caption: str
    header: tuple[str, ...]
    rows: list[tuple[str, ...]]


def read_run(path: Path) -> Run:
    """The run in `path`. A run without metrics.jsonl has no evaluations yet; a damaged metrics.jsonl is a
    ValueError naming the file and line (`run_dir.read_records`)."""
    try:
        records = read_records(path, METRICS_FILE)
    except FileNotFoundError:
        records = []
    evaluations = sorted((r for r in records if "test_accuracy" in r), key=lambda r: r["step"])
    config = json.loads((path / CONFIG_FILE).read_text()) if (path / CONFIG_FILE).exists() else {}
    sweep_status = json.loads((path / SWEEP_STATUS_FILE).read_text()) if (path / SWEEP_STATUS_FILE).exists() else {}
    last = evaluations[-1]["step"] if evaluations else 0
    if (path / DIVERGED_FILE).exists() or sweep_status.get("status") == "diverged":
        status = "diverged"
    elif sweep_status.get("status") == "failed":
        status = "failed: " + str(sweep_status.get("error", "")).splitlines()[0][:120]
    elif not evaluations:
        status = "no evaluation yet"
    elif config.get("num_steps", last) > last:
        status = f"unfinished (step {last} of {config['num_steps']})"
    else:
        status = "finished"
    return Run(path, evaluations, config, status, sweep_status.get("wall_seconds"))


def read_variant(root: Path, name: str) -> list[Run]:
    """The runs of one variant: `root/name` and its seeds (`seed_dirs`); none if it has not run."""
    return [read_run(path) for path in seed_dirs(root, name)]


def seeds_cell(runs: Sequence[Run]) -> str:
    """How many seeds a variant has, and how many of them did not finish."""
    cell = f"{len(runs)} seed{'s' if len(runs) != 1 else ''}"
    others = [run.status for run in runs if run.status != "finished"]
    return cell + (f" ({', '.join(others)})" if others else "")


# An extra column of a variant table: its header, and a function from one run's evaluations to its value (or
# None where the run lacks what it needs) with the format of the value.
Column = tuple[str, Callable[[list[dict[str, Any]]], float | None], str]


def variant_table(
    caption: str,
    groups: Mapping[str, Sequence[Run]],
    root: Path,
    *,
    extra: Sequence[Column] = (),
    paper_columns: Sequence[str] = (),
    paper: Mapping[str, Sequence[str]] | None = None,
) -> Table:
    """One row per variant (`groups`: label -> its runs, none if it has not run): its run directory, seeds,
    final step, final and best test accuracy (mean ± std over the seeds that did not diverge), the `extra`
    columns, the wall time, and `paper_columns` (the paper's numbers for it, from `paper`)."""
    header = ("variant", "run directory", "seeds", "final step", "final test accuracy", "best test accuracy (step)")
    header += tuple(name for name, _, _ in extra) + ("wall time", *paper_columns)
    rows = []
    for label, runs in groups.items():
        papers = tuple((paper or {}).get(label, ("—",) * len(paper_columns)))
        if not runs:
            rows.append((label, "—", NOT_RUN, *("—",) * (len(header) - 3 - len(paper_columns)), *papers))
            continue
        kept = [run for run in runs if run.evaluations and not run.diverged]
        finals = [run.evaluations[-1]["test_accuracy"] for run in kept]
        bests = [max(run.evaluations, key=lambda r: r["test_accuracy"]) for run in kept]
        best = mean_std([r["test_accuracy"] for r in bests], ".2%")
        if len(bests) == 1:
            best += f" ({bests[0]['step']})"
        steps = sorted({run.evaluations[-1]["step"] for run in kept})
        extras = []
        for _, function, spec in extra:
            values = [function(run.evaluations) for run in kept]
            extras.append(mean_std([v for v in values if v is not None], spec))
        walls = [run.wall_seconds for run in runs if run.wall_seconds is not None]
        rows.append(
            (
                label,
                runs[0].path.relative_to(root).as_posix(),
                seeds_cell(runs),
                ", ".join(map(str, steps)) or "—",
                mean_std(finals, ".2%"),
                best,
                *extras,
                mean_std(walls, ".0f") + (" s" if walls else ""),
                *papers,
            )
        )
    return Table(caption, header, rows)


def parse_markdown_table(text: str, caption: str) -> Table:
    """A Markdown pipe table (as `figures.table2`, a sweep's summary.md or adabn.md write them) as a `Table`."""
    lines = [line.strip() for line in text.splitlines() if line.strip().startswith("|")]
    cells = [tuple(cell.strip() for cell in line.strip("|").split("|")) for line in lines]
    rows = [row for row in cells[1:] if not all(set(cell) <= set("-: ") for cell in row)]
    return Table(caption, cells[0] if cells else (), rows)
