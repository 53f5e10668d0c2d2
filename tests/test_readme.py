"""The README stays true: its Python examples run, .ci/run runs the README's test command, and its Figure 1 row
agrees with the sweep the main command trains."""

import importlib.util
import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def test_readme_python_examples_run():
    blocks = re.findall(r"```python\n(.*?)```", README, re.DOTALL)
    assert len(blocks) >= 2
    for block in blocks:
        exec(compile(block, "README.md", "exec"), {})  # noqa: S102 -- running the README's examples is the test


def test_ci_runs_exactly_the_readme_test_command():
    test_command = next(line.strip() for line in README.splitlines() if "pytest" in line and "pip install" in line)
    ci_script = (ROOT / ".ci" / "run").read_text()
    assert test_command in ci_script.splitlines()


def test_the_figure1_row_gives_the_sweeps_seeds_and_the_numbers_its_docstring_expects():
    """The results table's Figure 1 row and `configs/sweeps/figure1.py` (which the main command trains) agree: the
    number of seeds, and every mean ± std the row quotes (test accuracy and median drift of both nets)."""
    spec = importlib.util.spec_from_file_location("figure1_sweep", ROOT / "configs" / "sweeps" / "figure1.py")
    sweep_file = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(sweep_file)
    row = next(line for line in README.splitlines() if line.startswith("| Figure 1 "))
    assert f"{sweep_file.SEEDS} seeds" in row and len(sweep_file.get_sweep().points) == 2 * sweep_file.SEEDS
    quoted = re.findall(r"\d+\.\d+%? ± \d+\.\d+%?", row)
    assert len(quoted) == 4 and all(number in sweep_file.__doc__ for number in quoted), quoted
