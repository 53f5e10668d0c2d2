"""The results page CLI: `python -m bnrepro.report --runs=runs --out=runs/report.html` (see `bnrepro.report`).

Writes OUT (HTML, self-contained) and OUT with suffix .md (Markdown, with its figures as PNG files beside it).
A `--runs` that is not a directory, or an OUT that cannot be written (what was written of the report is removed),
is one line, `error: ...`, and exit code 2.
"""

from pathlib import Path

import matplotlib
from absl import app, flags

from bnrepro.cli import user_errors_in_one_line
from bnrepro.report import write_report

_RUNS = flags.DEFINE_string("runs", "runs", "The directory holding the run and sweep directories.")
_OUT = flags.DEFINE_string("out", "runs/report.html", "The HTML page; the Markdown one goes beside it (.md).")


@user_errors_in_one_line
def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    matplotlib.use("Agg")  # PNG files only
    command = f"python -m bnrepro.report --runs={_RUNS.value} --out={_OUT.value}"
    html, markdown = write_report(Path(_RUNS.value).expanduser(), Path(_OUT.value).expanduser(), command)
    print(f"wrote {html} and {markdown}; open {html.resolve().as_uri()}")


if __name__ == "__main__":
    app.run(main)
