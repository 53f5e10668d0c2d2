"""Every notebook in notebooks/ runs top to bottom without an error and shows at least one figure.

Each runs once, as Jupyter runs it: a `python3` kernel of this interpreter started in notebooks/, with Jupyter's
inline matplotlib backend, so a figure shows as an `image/png` output (a module choosing another backend at import
would leave none). Notebooks are saved without outputs; the executed copy is only inspected here. The kernel's
temporary folder (TMPDIR) is a fresh one, which must be empty again when the notebook has run: a notebook removes
what it creates.

A notebook that trains runs here at a smaller size, as papermill runs one: a cell with `SMALLER[name]` is inserted
after its cell tagged `parameters`, so the notebook a user opens is unchanged, and its own asserts run as written.
"""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))
CELL_TIMEOUT_S = 600
# Steps at which each notebook's asserts still hold by a wide margin (measured: BN's median drift of the first
# layer 0.00 against 0.12 without BN after 2,000 steps; after 1,500 steps, mean final accuracy 92% with BN against
# 70% without, median drift 0.07 against 0.46); the step-10 gradient-norm ratios do not depend on the length.
SMALLER = {"bn_internals": "STEPS = 2_000", "figure1": "QUICK_STEPS = 1_500"}


def outputs(notebook: nbformat.NotebookNode) -> list[tuple[int, dict]]:
    """(cell index, output) for every output of every code cell."""
    return [
        (index, output)
        for index, cell in enumerate(notebook.cells)
        if cell.cell_type == "code"
        for output in cell.get("outputs", [])
    ]


def with_parameters(notebook: nbformat.NotebookNode, source: str) -> None:
    """Inserts a code cell of `source` after the notebook's one cell tagged `parameters`."""
    tagged = [i for i, cell in enumerate(notebook.cells) if "parameters" in cell.metadata.get("tags", [])]
    assert len(tagged) == 1, f"expected one cell tagged parameters, found {len(tagged)}"
    notebook.cells.insert(tagged[0] + 1, nbformat.v4.new_code_cell(source))


def test_notebooks_are_found():
    assert {path.stem for path in NOTEBOOKS} >= {"figure1", "sweep_analysis", "bn_internals", "gradient_propagation"}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda path: path.stem)
def test_notebook_runs_shows_its_figures_and_leaves_no_temporary_files(
    path: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
):
    monkeypatch.delenv("MPLBACKEND", raising=False)  # the kernel picks Jupyter's inline backend itself
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setenv("TMPDIR", str(scratch))  # the kernel's tempfile.gettempdir(), and its workers'
    notebook = nbformat.read(path, as_version=4)
    assert not outputs(notebook), f"{path.name} is saved with outputs; clear them"
    if path.stem in SMALLER:
        with_parameters(notebook, SMALLER[path.stem])
    # Raises CellExecutionError, with the failing cell and its traceback, if a cell fails.
    NotebookClient(notebook, timeout=CELL_TIMEOUT_S, kernel_name="python3").execute(cwd=str(path.parent))

    errors = [(index, output) for index, output in outputs(notebook) if output.output_type == "error"]
    assert not errors, f"{path.name}: error outputs {errors}"
    figures = [index for index, output in outputs(notebook) if "image/png" in output.get("data", {})]
    assert figures, f"{path.name} shows no figure: no cell has an image/png output"
    left = sorted(p.name for p in scratch.iterdir())
    assert not left, f"{path.name} left temporary files behind: {left}"
