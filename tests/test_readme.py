"""The README and docs/ stay true. Every command in README.md and docs/*.md (code blocks and inline code that start
with a program) is checked: the program and every file it names exist, each `--config=FILE:ARG` and
`--sweep=FILE:ARG` loads, each `--flag` is one of the program's own (absl's flag registry, or its `--help`) and
each `--config.KEY=V` a key of its config. The cheap ones really run, at tiny sizes on fake MNIST: a single MLP
run and the results page; a program whose flags neither lists (Figure 1's command) runs until it has read them.
The README's results table and docs/experiments.md quote the one table of experiments
(`bnrepro.report.experiments.EXPERIMENTS`); their links resolve; the Python examples run; the README keeps its
two commands, which CI runs."""

from __future__ import annotations

import concurrent.futures
import functools
import importlib
import importlib.util
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import ml_collections
import pytest
from fake_mnist import write_fake_mnist

from bnrepro.report import experiments

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
README = (ROOT / "README.md").read_text()
FIGURE1_COMMAND = (
    "python3.11 -m venv .venv && .venv/bin/pip install -r requirements.txt -e . && bash scripts/reproduce_figure1.sh"
)
TEST_COMMAND = (
    "python3.11 -m venv .venv && .venv/bin/pip install -r requirements.txt -r requirements-dev.txt -e . "
    "&& .venv/bin/python -m pytest -q"
)
PYTHONS = {"python", "python3", "python3.11", ".venv/bin/python"}
PROGRAMS = PYTHONS | {"bash", "pip", ".venv/bin/pip", "ray", "tfds", "tensorboard", "git", "export"}
REPO_DIRS = ("bnrepro/", "configs/", "scripts/", "notebooks/", "docs/", "tests/", "requirements")
PLACEHOLDER = re.compile(r"[A-Z][A-Z0-9_]*")  # FILE, DIR, NET: a value the reader fills in
# What a real run of a documented command gets appended: tiny, and on fake data.
TINY = ("--config.num_steps=20", "--config.eval_every=10", "--config.checkpoint_every=20")


# --- The commands of the pages ----------------------------------------------------------------------------------


def documented_commands() -> Iterator[tuple[str, str]]:
    """(page, command) for each shell line of a code block and each inline code span that starts with a program;
    a command of several (`&&`, `;`) is split, environment assignments dropped."""
    for page in PAGES:
        text = page.read_text()
        prose = re.sub(r"```python\n.*?```", "", text, flags=re.DOTALL)
        lines = [line[4:] for line in prose.splitlines() if line.startswith("    ")]
        lines += [line for block in re.findall(r"```\w*\n(.*?)```", prose, re.DOTALL) for line in block.splitlines()]
        lines += re.findall(r"`([^`\n]+)`", prose)
        for line in lines:
            for part in re.split(r"\s*(?:&&|;)\s*", line):
                words = part.split()
                while words and re.fullmatch(r"[A-Z_]+=\S*", words[0]):
                    words = words[1:]
                if words and words[0] in PROGRAMS:
                    yield page.name, shlex.join(shlex.split(" ".join(words), comments=True))


COMMANDS = sorted(set(documented_commands()))


def program(words: list[str]) -> str | None:
    """The Python program a command runs, as `-m MODULE` or a script's path (a bash script: the Python script it
    runs); None for a program whose flags are not ours (pip, ray, pytest, ...)."""
    if words[0] in PYTHONS and words[1] == "-m" and words[2] not in ("venv", "pip", "pytest"):
        return f"-m {words[2]}"
    if words[0] in PYTHONS and words[1].endswith(".py"):
        return words[1]
    if words[0] == "bash" and (ROOT / words[1]).exists():
        return next(iter(re.findall(r"scripts/\w+\.py", (ROOT / words[1]).read_text())), None)
    return None


# Imports each program in one process, without running it, and lists the absl flags it defines (and absl's own),
# removing them before the next one: absl's flag registry, at the cost of one JAX import for all the programs. A
# program that defines none is asked for its `--help` (argparse).
FLAG_REGISTRY = """
import json, runpy, sys
from absl import app, flags, logging
builtin = set(flags.FLAGS)
found = {}
for name in json.loads(sys.argv[1]):
    before = set(flags.FLAGS)
    try:
        if name.startswith("-m "):
            runpy.run_module(name[3:], run_name="documented_program")
        else:
            sys.path.insert(0, name.rpartition("/")[0])
            runpy.run_path(name, run_name="documented_program")
    except BaseException:
        found[name] = None
        continue
    defined = set(flags.FLAGS) - before
    found[name] = sorted(defined | builtin) if defined else None
    for flag in defined:
        delattr(flags.FLAGS, flag)
print(json.dumps(found))
"""


@functools.cache
def registry() -> dict[str, frozenset[str] | None]:
    """Each documented Python program's flags (None: it defines none, it is not an absl program)."""
    programs = sorted({p for _, command in COMMANDS if (p := program(shlex.split(command)))})
    done = subprocess.run(
        [sys.executable, "-c", FLAG_REGISTRY, json.dumps(programs)],
        cwd=ROOT, capture_output=True, text=True, timeout=300, check=True,
    )  # fmt: skip
    listed = json.loads(done.stdout.splitlines()[-1])
    return {name: frozenset(names) if names else help_flags(name) for name, names in listed.items()}


def help_flags(name: str) -> frozenset[str] | None:
    """The flags a program that is not an absl one (argparse) lists with `--help`; None if it has no `--help`."""
    argv = [sys.executable, *name.split()]
    done = subprocess.run([*argv, "--help"], cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)
    listed = re.findall(r"(?<![\w-])--([A-Za-z_][\w-]*)", done.stdout)
    return frozenset(listed) if done.returncode == 0 and listed else None


def load(path_and_arg: str, function: str) -> object:
    """`function` (get_config or get_sweep) of a config or sweep file, called with its argument, if it has one."""
    path, _, arg = path_and_arg.partition(":")
    module = importlib.import_module(path.removesuffix(".py").replace("/", "."))
    return getattr(module, function)(arg) if arg else getattr(module, function)()


def has_key(config: ml_collections.ConfigDict, key: str) -> bool:
    for part in key.split("."):
        if not isinstance(config, ml_collections.ConfigDict) or part not in config:
            return False
        config = config[part]
    return True


def problems(command: str) -> list[str]:
    """What is wrong with a documented command, without running it; [] if nothing."""
    words = shlex.split(command)
    found = []
    if words[0] in PYTHONS and words[1] == "-m":
        if words[2] != "venv" and importlib.util.find_spec(words[2]) is None:
            return [f"no module {words[2]}"]
    elif words[0] in PYTHONS | {"bash"} and not (ROOT / words[1]).exists():
        return [f"no file {words[1]}"]
    elif words[0] not in ("export", "pip", ".venv/bin/pip") and not (
        shutil.which(words[0]) or (Path(sys.executable).parent / words[0]).exists()
    ):
        return [f"no program {words[0]}"]
    overrides_for_all = "--" in words  # scripts/table2.py: what follows `--` goes to every run
    arguments = words[: words.index("--")] if overrides_for_all else words
    values = [word.partition("=")[2] if word.startswith("-") else word for word in arguments[1:]]
    for value in values:
        path = value.partition(":")[0]
        if path.startswith(REPO_DIRS) and not PLACEHOLDER.search(path) and not (ROOT / path).exists():
            found.append(f"no file {path}")
    config = None
    for word in arguments:
        name, _, value = word.partition("=")
        if name not in ("--config", "--sweep") or PLACEHOLDER.search(value):
            continue  # not a file argument, or one the reader fills in (FILE, NET)
        if not (ROOT / value.split(":")[0]).exists():
            continue  # reported above
        try:
            loaded = load(value, "get_config" if name == "--config" else "get_sweep")
        except Exception as e:  # noqa: BLE001 -- any failure to load is what this reports
            found.append(f"{word} does not load: {e}")
            continue
        config = loaded if name == "--config" else None
    for word in arguments:
        key = word.partition("=")[0].removeprefix("--config.")
        if word.startswith("--config.") and config is not None and not has_key(config, key):
            found.append(f"--config.{key}: no such key in the config")
    flagged = [w.partition("=")[0][2:] for w in arguments[1:] if w.startswith("--") and not w.startswith("--config.")]
    name = program(words)
    if name and flagged:
        known = registry().get(name)
        if known is None:
            found.append(f"{shlex.join(words[:2])} defines no absl flags; run it instead (RUN_INSTEAD)")
        else:
            found += [f"--{flag}: not a flag of {shlex.join(words[:2])}" for flag in flagged if flag not in known]
    return found


# --- Real runs --------------------------------------------------------------------------------------------------

# Programs whose flags neither absl's registry nor `--help` lists: their documented commands run, with an unknown
# config key added last, so that they stop (exit code 2, naming it) once they have read every documented flag;
# tiny and on fake data should they not. Figure 1's command itself runs for real in tests/test_train.py.
RUN_INSTEAD = ("scripts/reproduce_figure1.sh",)
PROBE = "--config.no_such_key_but_every_documented_flag_was_read=0"


@pytest.fixture(scope="module")
def fake_mnist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A full-size fake MNIST cache (the loader checks the split sizes) that subprocesses can read."""
    return write_fake_mnist(tmp_path_factory.mktemp("mnist"), {"train": 50_000, "valid": 10_000, "test": 10_000})


def cheap_run(command: str, workdir: Path, data: Path) -> list[str] | None:
    """The argv of a tiny real run of `command` (into `workdir`, on `data`), or None if it is not cheap."""
    words = shlex.split(command)
    if words[:3] == ["python", "-m", "bnrepro.report"]:
        workdir.mkdir(parents=True)
        return [sys.executable, "-m", "bnrepro.report", f"--runs={workdir}", f"--out={workdir / 'report.html'}"]
    if words[:1] == ["bash"] and words[1] in RUN_INSTEAD and len(words) > 2:
        return [*words, *TINY, f"--config.data_dir={data}", PROBE]
    config_flag = next((w for w in words if w.startswith("--config=")), None)
    if words[:3] != ["python", "-m", "bnrepro.main"] or config_flag is None or PLACEHOLDER.search(config_flag):
        return None
    if load(config_flag.partition("=")[2], "get_config").model.name != "mlp":
        return None  # a conv net or an LSTM compiles for longer than this test may take
    argv = [w if not w.startswith("--workdir=") else f"--workdir={workdir}" for w in words[3:]]
    return [sys.executable, "-m", "bnrepro.main", *argv, *TINY, f"--config.data_dir={data}"]


def run(argv: list[str], workdir: Path, data: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "RUNS_DIR": str(workdir), "BNREPRO_DATA_DIR": str(data)}
    return subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, check=False)


# --- Tests ------------------------------------------------------------------------------------------------------


def test_the_pages_document_commands_and_the_readme_is_short():
    assert len(COMMANDS) > 40 and {"README.md", "experiments.md", "runs.md", "sweeps.md"} <= {p for p, _ in COMMANDS}
    assert len(README.splitlines()) <= 150


def test_the_two_commands_come_first_and_ci_runs_the_test_command():
    blocks = [line.strip() for line in README.splitlines() if line.startswith("    ")]
    assert blocks[:2] == [FIGURE1_COMMAND, TEST_COMMAND]
    assert TEST_COMMAND in (ROOT / ".ci" / "run").read_text().splitlines()


def test_every_documented_command_names_real_programs_files_configs_and_flags():
    found = [f"{page}: {command}: {problem}" for page, command in COMMANDS for problem in problems(command)]
    wrong = [p for p in found if not (p.endswith("(RUN_INSTEAD)") and any(r in p for r in RUN_INSTEAD))]
    assert wrong == []


@pytest.mark.parametrize(
    ("command", "expected"),
    [
        ("python -m bnrepro.main --config=configs/mnist_mlp.py:bn --workdirr=runs/x", "--workdirr: not a flag"),
        ("python -m bnrepro.main --config=configs/mnist_mlp.py:bn --config.learning_rat=0.5", "learning_rat: no such"),
        ("python -m bnrepro.main --config=configs/mnist_mlp.py:bm --workdir=runs/x", "does not load"),
        ("python -m bnrepro.main --config=configs/mnist_mlpp.py --workdir=runs/x", "no file configs/mnist_mlpp.py"),
        ("python -m bnrepro.sweep --sweep=configs/sweeps/figure1.py:x --workdir=runs", "does not load"),
        ("python scripts/table2.py --workdir=runs/table2 --seedz=3", "--seedz: not a flag of python scripts/table2"),
        ("python -m bnrepro.reprot --runs=runs", "no module bnrepro.reprot"),
        ("bash scripts/reproduce_figure1.sh.bak --seeds=5", "no file scripts/reproduce_figure1.sh.bak"),
    ],
)
def test_a_misspelt_command_is_caught(command, expected):
    assert any(expected in problem for problem in problems(command)), problems(command)


def test_the_cheap_commands_run_for_real(fake_mnist, tmp_path):
    """An MLP run and the results page, tiny, on fake data; Figure 1's command reads its documented flags and
    stops at the probe key, and stops at a misspelt flag instead."""
    argvs = {}  # each program once, with the most arguments any of its cheap commands gives it
    for index, (_, command) in enumerate(COMMANDS):
        argv = cheap_run(command, tmp_path / f"run{index}", fake_mnist)
        name = argv and (argv[1] if argv[0] == "bash" else argv[2])
        if argv is not None and len(argv) > len(argvs.get(name, ((),))[0]):
            argvs[name] = (argv, index)
    misspelt = ["bash", RUN_INSTEAD[0], "--seedz=2", *TINY, PROBE]
    assert {"bnrepro.main", "bnrepro.report", *RUN_INSTEAD} <= set(argvs)
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        done = list(pool.map(lambda a: run(a[0], tmp_path / f"run{a[1]}", fake_mnist), argvs.values()))
        wrong = run(misspelt, tmp_path / "misspelt", fake_mnist)
    for (argv, _), result in zip(argvs.values(), done):
        if PROBE in argv:
            probe = PROBE.partition("=")[0].removeprefix("--config.")
            assert result.returncode == 2 and probe in result.stderr, (shlex.join(argv), result.stderr[-3000:])
        else:
            assert result.returncode == 0, (shlex.join(argv), result.stderr[-3000:])
    assert wrong.returncode != 0 and "seedz" in wrong.stderr and PROBE not in wrong.stderr


def test_the_python_examples_run(fake_mnist, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("BNREPRO_DATA_DIR", str(fake_mnist))
    blocks = [b for page in PAGES for b in re.findall(r"```python\n(.*?)```", page.read_text(), re.DOTALL)]
    assert len(blocks) >= 3
    for block in blocks:
        exec(compile(block, "docs", "exec"), {})  # noqa: S102 -- running the documented examples is the test
    assert (tmp_path / "runs").is_dir()


# --- The pages quote the one table ------------------------------------------------------------------------------


def anchors(page: Path) -> set[str]:
    """GitHub's anchors of a page's headings."""
    headings = re.findall(r"^#+ (.+)$", page.read_text(), re.MULTILINE)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in headings}


def section(page: Path, anchor: str) -> str:
    """The text of the section under the heading with `anchor`, to the next heading of its level or above."""
    text = page.read_text()
    headings = list(re.finditer(r"^(#+) (.+)$", text, re.MULTILINE))
    for i, heading in enumerate(headings):
        if re.sub(r"[^\w\- ]", "", heading[2].strip().lower()).replace(" ", "-") == anchor:
            level = len(heading[1])
            end = next((h.start() for h in headings[i + 1 :] if len(h[1]) <= level), len(text))
            return text[heading.start() : end]
    raise AssertionError(f"{page.name} has no section #{anchor}")


def numbers(text: str) -> set[str]:
    return set(re.findall(r"\d+(?:\.\d+)?(?:e\d+)?", text))


def test_every_link_between_the_pages_resolves():
    for page in PAGES:
        for link in re.findall(r"\]\(([^)]+)\)", page.read_text()):
            assert not re.match(r"\w+://", link), f"{page.name}: {link}"
            path, _, anchor = link.partition("#")
            linked = (page.parent / path).resolve() if path else page
            assert linked.exists(), f"{page.name}: {link}"
            assert not anchor or anchor in anchors(linked), f"{page.name}: {link}"


def test_the_results_table_quotes_the_experiments_table_and_the_docs():
    rows = [line for line in README.splitlines() if line.startswith("| ") and "](docs/" in line]
    by_details = {experiment.details: experiment for experiment in experiments.EXPERIMENTS}
    assert {experiment.details for experiment in experiments.EXPERIMENTS} <= {
        re.search(r"\]\((docs/[^)]+)\)", row)[1] for row in rows
    }
    for row in rows:
        _, ours, paper, details = (cell.strip() for cell in row.strip("|").split("|"))
        link = re.search(r"\]\((docs/[^)]+)\)", details)[1]
        experiment = by_details[link]
        assert numbers(paper) <= numbers(experiment.paper), (row, experiment.paper)
        page, _, anchor = link.partition("#")
        assert numbers(ours) <= numbers(section(ROOT / page, anchor)), row


def test_the_docs_give_every_command_of_the_experiments_table():
    for experiment in experiments.EXPERIMENTS:
        page, _, anchor = experiment.details.partition("#")
        text = section(ROOT / page, anchor)
        for command in experiment.command.format(runs="runs").splitlines():
            assert re.sub(r"^[A-Z_]+=\S+ ", "", command) in text, (experiment.key, command)


def test_the_figure1_rows_give_the_seeds_of_the_sweep_the_main_command_trains():
    from configs.sweeps import figure1

    rows = [line for line in README.splitlines() if line.startswith("| Figure 1")]
    assert rows and all(f"({figure1.SEEDS} seeds)" in row for row in rows)


def test_no_package_archive_or_registry_host_is_named():
    for page in PAGES:
        hosts = re.findall(r"\b(?:[a-z0-9-]+\.)+(?:org|com|io|net|dev)\b", page.read_text())
        assert hosts == [], f"{page.name}: {hosts}"
