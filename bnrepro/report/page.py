"""The results page as HTML (one self-contained file: figures embedded as base64 PNG data URIs, no script, no
server) and as Markdown (figures as PNG files next to it, linked relatively), from the same `Report`, so both
hold the same tables, cell for cell."""

from __future__ import annotations

import base64
import html
import json
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

from bnrepro.report.experiments import Content, Experiment, ShownConfig
from bnrepro.report.runs import NOT_RUN, Table


class Section(NamedTuple):
    """One experiment on the page."""

    experiment: Experiment
    command: str  # the experiment's command(s), for this --runs
    content: Content | None  # None: not run yet
    error: str | None = None  # why its run directories could not be read

    @property
    def status(self) -> str:
        if self.error is not None:
            return "could not be read"
        if self.content is None:
            return NOT_RUN
        if self.content.missing:
            return f"partly run ({NOT_RUN}: {', '.join(label for label, _ in self.content.missing)})"
        return "run"


class Report(NamedTuple):
    runs: Path  # the --runs directory
    commit: str  # what the page says of the code's version
    generated: str  # when it was built
    sections: list[Section]


TITLE = "bnrepro: Batch Normalization (Ioffe & Szegedy, 2015) reproduced — results"
NOT_RUN_LINE = f"{NOT_RUN} — command:"

STYLE = """
body { font-family: system-ui, sans-serif; max-width: 1250px; margin: 2em auto; padding: 0 1em; color: #222; }
h2 { border-bottom: 1px solid #ccc; padding-bottom: .2em; margin-top: 2em; }
table { border-collapse: collapse; margin: 1em 0; font-size: 90%; }
caption { text-align: left; font-weight: bold; padding: .3em 0; }
th, td { border: 1px solid #bbb; padding: .25em .6em; text-align: left; vertical-align: top; }
th { background: #f0f0f0; }
pre { background: #f6f6f6; padding: .6em; overflow-x: auto; }
code { background: #f6f6f6; }
figure { margin: 1em 0; }
img { max-width: 100%; border: 1px solid #ddd; }
figcaption { font-size: 90%; color: #555; }
.missing { color: #a03030; font-weight: bold; }
.meta { color: #555; }
"""


def _seeds(config: ShownConfig) -> str:
    return f"seed{'s' if len(config.seeds) != 1 else ''} {', '.join(map(str, config.seeds))}"


# --- HTML -------------------------------------------------------------------------------------------------------


def _html_cell(text: str) -> str:
    """A cell's text, breakable after commas and slashes (a sweep point's run directory is one long word)."""
    return html.escape(text).replace(",", ",<wbr>").replace("/", "/<wbr>")


def _html_table(table: Table) -> str:
    head = "".join(f"<th>{_html_cell(cell)}</th>" for cell in table.header)
    body = "".join("<tr>" + "".join(f"<td>{_html_cell(cell)}</td>" for cell in row) + "</tr>\n" for row in table.rows)
    return (
        f"<table>\n<caption>{html.escape(table.caption)}</caption>\n<thead><tr>{head}</tr></thead>\n"
        f"<tbody>\n{body}</tbody>\n</table>\n"
    )


def _html_section(section: Section) -> str:
    experiment = section.experiment
    parts = [
        f'<section id="{experiment.key}">\n<h2>{html.escape(experiment.title)}</h2>\n',
        f"<p><b>Reproduces:</b> {html.escape(experiment.reproduces)}</p>\n",
        f"<p><b>Paper:</b> {html.escape(experiment.paper)}</p>\n",
        f"<p><b>Details and reading:</b> <code>{html.escape(experiment.details)}</code></p>\n",
    ]
    command = f"<pre><code>{html.escape(section.command)}</code></pre>\n"
    if section.content is None and section.error is None:
        return "".join([*parts, f'<p class="missing">{NOT_RUN_LINE}</p>\n', command, "</section>\n"])
    parts += ["<p><b>Command:</b></p>\n", command]
    if section.error is not None:
        parts.append(f'<p class="missing">Its runs could not be read: {html.escape(section.error)}</p>\n')
        return "".join([*parts, "</section>\n"])
    content = section.content
    for figure in content.figures:
        data = base64.b64encode(figure.png).decode("ascii")
        parts.append(
            f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(figure.caption)}">'
            f"<figcaption>{html.escape(figure.caption)}</figcaption></figure>\n"
        )
    parts += [_html_table(table) for table in content.tables]
    if content.notes:
        parts.append("<ul>\n" + "".join(f"<li>{html.escape(note)}</li>\n" for note in content.notes) + "</ul>\n")
    for label, missing_command in content.missing:
        parts.append(
            f'<p><span class="missing">{html.escape(label)}: {NOT_RUN_LINE}</span> '
            f"<code>{html.escape(missing_command)}</code></p>\n"
        )
    for shown in content.configs:
        parts.append(
            f"<details><summary>config.json of <code>{html.escape(shown.run)}</code> ({_seeds(shown)}), made by "
            f"<code>{html.escape(shown.command)}</code></summary>\n"
            f"<pre>{html.escape(json.dumps(shown.config, indent=2), quote=False)}</pre></details>\n"
        )
    return "".join([*parts, "</section>\n"])


def _overview(report: Report) -> Table:
    return Table(
        "Experiments",
        ("experiment", "reproduces", "status"),
        [(s.experiment.title, s.experiment.reproduces, s.status) for s in report.sections],
    )


def _html_overview(report: Report) -> str:
    """`_overview`, each title a link to its section."""
    table = _overview(report)
    rows = "".join(
        f'<tr><td><a href="#{section.experiment.key}">{html.escape(title)}</a></td><td>{html.escape(reproduces)}'
        f"</td><td>{html.escape(status)}</td></tr>\n"
        for section, (title, reproduces, status) in zip(report.sections, table.rows)
    )
    head = "".join(f"<th>{cell}</th>" for cell in table.header)
    return f"<table>\n<caption>{table.caption}</caption>\n<thead><tr>{head}</tr></thead>\n<tbody>\n{rows}</tbody>\n</table>\n"


def html_page(report: Report, command: str) -> str:
    """The page as one HTML document; `command` is the one that built it."""
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{html.escape(TITLE)}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n"
        f"<h1>{html.escape(TITLE)}</h1>\n"
        f'<p class="meta">Runs: <code>{html.escape(report.runs.as_posix())}</code> · built {report.generated} · '
        f"{html.escape(report.commit)}</p>\n"
        f'<p class="meta">Built by <code>{html.escape(command)}</code>; each table row summarizes a variant\'s '
        "seeds (mean ± sample std).</p>\n"
        + _html_overview(report)
        + "".join(_html_section(section) for section in report.sections)
        + "</body>\n</html>\n"
    )


# --- Markdown ---------------------------------------------------------------------------------------------------


def _markdown_table(table: Table) -> str:
    def row(cells: tuple[str, ...]) -> str:
        return "| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |"

    lines = [f"**{table.caption}**", "", row(table.header), "|" + "---|" * len(table.header)]
    return "\n".join(lines + [row(cells) for cells in table.rows]) + "\n"


def _markdown_section(section: Section, image: Callable[[Section, int], str]) -> str:
    experiment = section.experiment
    parts = [
        f'<a id="{experiment.key}"></a>\n## {experiment.title}\n',
        f"**Reproduces:** {experiment.reproduces}\n",
        f"**Paper:** {experiment.paper}\n",
        f"**Details and reading:** `{experiment.details}`\n",
    ]
    command = f"```\n{section.command}\n```\n"
    if section.content is None and section.error is None:
        return "\n".join([*parts, f"**{NOT_RUN_LINE}**\n", command])
    parts += ["**Command:**\n", command]
    if section.error is not None:
        return "\n".join([*parts, f"**Its runs could not be read:** {section.error}\n"])
    content = section.content
    for index, figure in enumerate(content.figures):
        parts.append(f"![{figure.caption}]({image(section, index)})\n\n*{figure.caption}*\n")
    parts += [_markdown_table(table) for table in content.tables]
    if content.notes:
        parts.append("".join(f"- {note}\n" for note in content.notes))
    parts += [f"**{label}: {NOT_RUN_LINE}** `{missing_command}`\n" for label, missing_command in content.missing]
    for shown in content.configs:
        parts.append(
            f"<details><summary>config.json of <code>{html.escape(shown.run)}</code> ({_seeds(shown)}), made by "
            f"<code>{html.escape(shown.command)}</code></summary>\n\n```json\n{json.dumps(shown.config, indent=2)}\n"
            "```\n\n</details>\n"
        )
    return "\n".join(parts)


def markdown_page(report: Report, command: str, image: Callable[[Section, int], str]) -> str:
    """The page as Markdown; `image(section, i)` is the relative path of the section's i-th figure's PNG file."""
    head = [
        f"# {TITLE}\n",
        f"Runs: `{report.runs.as_posix()}` · built {report.generated} · {report.commit}\n",
        f"Built by `{command}`; each table row summarizes a variant's seeds (mean ± sample std).\n",
        _markdown_table(_overview(report)),
    ]
    return "\n".join(head + [_markdown_section(section, image) for section in report.sections])
