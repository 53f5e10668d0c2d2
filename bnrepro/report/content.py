"""What an experiment's section of the results page shows (`Content`: figures, tables, notes, configs, the
variants not run yet), built by `bnrepro.report.experiments` and `bnrepro.report.claims`, printed by
`bnrepro.report.page`."""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import matplotlib.pyplot as plt

from bnrepro.report.runs import Run, Table


class Figure(NamedTuple):
    caption: str
    png: bytes


class ShownConfig(NamedTuple):
    """A variant's config.json (its first seed's), and the command that trains it."""

    run: str  # the run directory, relative to --runs
    command: str
    config: dict[str, Any]
    seeds: list[Any]  # config.seed of each of the variant's runs


def shown_config(root: Path, command: str, runs: Sequence[Run]) -> ShownConfig:
    """The config.json of `runs`' first run (they differ in their seeds, or also in what their group shares), with
    the command that trains them (`{runs}`: `root`) and their seeds, each once."""
    seeds = list(dict.fromkeys(run.config.get("seed") for run in runs))
    return ShownConfig(
        runs[0].path.relative_to(root).as_posix(), command.format(runs=root.as_posix()), runs[0].config, seeds
    )


class Content(NamedTuple):
    """What the page shows of an experiment that has run (in part)."""

    figures: list[Figure]
    tables: list[Table]
    notes: list[str]
    configs: list[ShownConfig]
    missing: list[tuple[str, str]]  # (variant, command) of the variants not run yet


def png(figure: plt.Figure) -> bytes:
    """The figure as PNG bytes; the figure is closed."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    plt.close(figure)
    return buffer.getvalue()
