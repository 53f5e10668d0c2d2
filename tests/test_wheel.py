"""bnrepro as a user installs it: `pip install .` (not editable), then the documented commands from another
directory, a shipped config named as in the repository (`bnrepro.cli.find_config_file`)."""

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from fake_mnist import write_fake_mnist

from bnrepro.training.run_dir import METRICS_FILE

REPO = Path(__file__).resolve().parent.parent
# What the wheel is built from: the package, the configs it ships, and what pyproject.toml names.
SOURCES = ("pyproject.toml", "README.md", "bnrepro", "configs")


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> tuple[Path, Path]:
    """The wheel built from a copy of the sources (pip builds in the source tree) and installed, without its
    dependencies (the test environment has them), into a folder of its own; returns the wheel and the folder."""
    root = tmp_path_factory.mktemp("wheel")
    (root / "src").mkdir()
    for name in SOURCES:
        source = REPO / name
        if source.is_dir():
            shutil.copytree(source, root / "src" / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(source, root / "src" / name)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "wheel", "--no-deps", str(root / "src"), "-w", str(root / "dist")], check=True, timeout=300)
    (wheel,) = (root / "dist").glob("bnrepro-*.whl")
    subprocess.run([*pip, "install", "--no-deps", f"--target={root / 'site'}", str(wheel)], check=True, timeout=300)
    return wheel, root / "site"


def _run(site: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess:
    """`python ARGS` in `cwd`, outside the repository, importing bnrepro from `site` only: PYTHONPATH comes
    before the test environment's own (editable) bnrepro."""
    env = {**os.environ, "PYTHONPATH": str(site)}
    return subprocess.run(
        [sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300, check=False
    )


def test_the_wheel_declares_its_dependencies_ray_included(installed) -> None:
    wheel, _ = installed
    with zipfile.ZipFile(wheel) as archive:
        (metadata,) = (name for name in archive.namelist() if name.endswith(".dist-info/METADATA"))
        requirements = [line for line in archive.read(metadata).decode().splitlines() if line.startswith("Requires")]
    assert any(line.startswith("Requires-Dist: ray") and "2.60" in line for line in requirements), requirements
    assert any(line.startswith("Requires-Dist: jax") for line in requirements), requirements


def test_the_installed_commands_run_from_another_directory(installed, tmp_path: Path) -> None:
    """`python -m bnrepro.sweep --help`, and a 20-step run of `configs/mnist_mlp.py:bn`, a path that exists
    only in the installed `configs` package, from an empty directory."""
    _, site = installed
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    where = _run(site, elsewhere, "-c", "import bnrepro, configs; print(bnrepro.__file__); print(configs.__file__)")
    assert where.returncode == 0, where.stderr[-2000:]
    assert all(Path(line).is_relative_to(site) for line in where.stdout.split()), where.stdout

    sweep_help = _run(site, elsewhere, "-m", "bnrepro.sweep", "--help")
    assert "--sweep:" in sweep_help.stdout and "Traceback" not in sweep_help.stderr, sweep_help.stderr[-2000:]

    data_dir = write_fake_mnist(tmp_path / "mnist", {"train": 50_000, "valid": 10_000, "test": 10_000})
    run = _run(
        site, elsewhere, "-m", "bnrepro.main", "--config=configs/mnist_mlp.py:bn", f"--workdir={tmp_path / 'run'}",
        "--config.num_steps=20", "--config.eval_every=20", "--config.steps_per_dispatch=20",
        "--config.checkpoint_every=20", "--config.population_batches=5", f"--config.data_dir={data_dir}",
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    records = [json.loads(line) for line in (tmp_path / "run" / METRICS_FILE).read_text().splitlines()]
    assert [r["step"] for r in records] == [20]
    assert list(elsewhere.iterdir()) == []  # nothing written where it ran
