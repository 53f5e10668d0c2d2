"""Checkpoints are checked before use (`bnrepro.training.checkpoints`): damaged ones are refused, the previous kept
one is used instead, the config guard reads the checkpoint's own config, and checkpoints made before all this
still resume."""

import json
import logging
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import jax
import numpy as np
import pytest
from training_run import small_config, train_and_evaluate

from bnrepro.training import checkpoints, run_dir
from bnrepro.training.state import TrainState

REPO = Path(__file__).resolve().parent.parent


def _largest_file(step_dir: Path) -> Path:
    return max((f for f in step_dir.rglob("*") if f.is_file()), key=lambda f: f.stat().st_size)


def _flip_bytes(path: Path) -> None:
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 16] = bytes(b ^ 0xFF for b in data[middle : middle + 16])
    path.write_bytes(bytes(data))


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _empty(path: Path) -> None:
    path.write_bytes(b"")


def _delete(path: Path) -> None:
    path.unlink()


@pytest.fixture(scope="module")
def finished_run(module_fake_mnist: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, TrainState]:
    """`small_config`'s run (60 steps, checkpoints 40 and 60 kept), trained once: the tests copy its directory to
    damage it, and compare with its final state."""
    workdir = tmp_path_factory.mktemp("finished") / "run"
    return workdir, train_and_evaluate(small_config(data_dir=str(module_fake_mnist)), workdir)


def _copy(finished_run: tuple[Path, TrainState], workdir: Path) -> Path:
    return shutil.copytree(finished_run[0], workdir)


def _assert_same_params(a, b) -> None:
    jax.tree.map(np.testing.assert_array_equal, a.params, b.params)
    jax.tree.map(np.testing.assert_array_equal, a.batch_stats, b.batch_stats)


@pytest.mark.parametrize("damage", [_flip_bytes, _truncate, _empty, _delete])
def test_a_damaged_latest_checkpoint_falls_back_to_the_previous_one(
    damage: Callable[[Path], None],
    module_fake_mnist: Path,
    finished_run: tuple[Path, TrainState],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    config = small_config(data_dir=str(module_fake_mnist))
    reference = finished_run[1]
    workdir = _copy(finished_run, tmp_path / "run")  # checkpoints 40 and 60 kept
    damage(_largest_file(workdir / run_dir.CHECKPOINT_DIR / "60"))

    with caplog.at_level(logging.WARNING):
        resumed = train_and_evaluate(config, workdir)  # from 40, to 60 again
    assert any(re.search(r"checkpoint 60 in .* is corrupt: .*checkpoint 40", r.getMessage()) for r in caplog.records)
    _assert_same_params(resumed, reference)
    assert int(resumed.step) == 60
    assert (workdir / checkpoints.CORRUPT_DIR / "60").is_dir()  # kept for inspection, out of orbax's way
    assert sorted(int(p.name) for p in (workdir / run_dir.CHECKPOINT_DIR).iterdir()) == [40, 60]
    assert [r["step"] for r in run_dir.read_records(workdir)] == [20, 40, 60]


def test_flipped_bytes_in_the_only_checkpoint_stop_the_run(module_fake_mnist: Path, tmp_path: Path) -> None:
    config = small_config(data_dir=str(module_fake_mnist), num_steps=20)
    train_and_evaluate(config, tmp_path)
    _flip_bytes(_largest_file(tmp_path / run_dir.CHECKPOINT_DIR / "20"))
    with pytest.raises(ValueError, match=r"^checkpoint 20 in .* is corrupt: its values do not match the digest"):
        train_and_evaluate(small_config(data_dir=str(module_fake_mnist)), tmp_path)


def test_both_kept_checkpoints_damaged_stop_the_run(
    module_fake_mnist: Path, finished_run: tuple[Path, TrainState], tmp_path: Path
) -> None:
    config = small_config(data_dir=str(module_fake_mnist))
    workdir = _copy(finished_run, tmp_path / "run")
    _flip_bytes(_largest_file(workdir / run_dir.CHECKPOINT_DIR / "60"))
    _truncate(_largest_file(workdir / run_dir.CHECKPOINT_DIR / "40"))
    with pytest.raises(ValueError, match=r"^checkpoint 60 in .* is corrupt: .*Checkpoint 40 is corrupt too") as e:
        train_and_evaluate(config, workdir)
    assert "Traceback" not in str(e.value) and "\n" not in str(e.value)
    assert sorted(p.name for p in (workdir / run_dir.CHECKPOINT_DIR).iterdir()) == ["40", "60"]  # left as they are


def test_the_config_guard_reads_the_checkpoints_config(module_fake_mnist: Path, tmp_path: Path) -> None:
    config = small_config(data_dir=str(module_fake_mnist), num_steps=40)
    train_and_evaluate(config, tmp_path)
    (tmp_path / run_dir.CONFIG_FILE).unlink()
    other = small_config(data_dir=str(module_fake_mnist), learning_rate=config.learning_rate * 2)
    with pytest.raises(ValueError, match=r"config\.learning_rate: checkpoint 40 in .* was made with learning_rate="):
        train_and_evaluate(other, tmp_path)
    train_and_evaluate(small_config(data_dir=str(module_fake_mnist)), tmp_path)  # the same config resumes


def test_num_steps_below_the_checkpoint_is_refused(
    module_fake_mnist: Path, finished_run: tuple[Path, TrainState], tmp_path: Path
) -> None:
    workdir = _copy(finished_run, tmp_path / "run")
    saved = (workdir / run_dir.CONFIG_FILE).read_text()
    with pytest.raises(ValueError, match=r"config\.num_steps=40 is below step 60 of the checkpoint"):
        train_and_evaluate(small_config(data_dir=str(module_fake_mnist), num_steps=40), workdir)
    assert (workdir / run_dir.CONFIG_FILE).read_text() == saved


def _strip_metadata(step_dir: Path) -> None:
    """Makes a checkpoint look as one made before digests: no "bnrepro" entry in orbax's step metadata."""
    path = step_dir / "_CHECKPOINT_METADATA"
    metadata = json.loads(path.read_text())
    metadata["custom_metadata"].pop(checkpoints.METADATA_KEY)
    path.write_text(json.dumps(metadata))


def test_an_old_checkpoint_without_digest_or_config_resumes(
    module_fake_mnist: Path, finished_run: tuple[Path, TrainState], tmp_path: Path
) -> None:
    config = small_config(data_dir=str(module_fake_mnist))
    reference = finished_run[1]
    workdir = tmp_path / "run"
    train_and_evaluate(small_config(data_dir=str(module_fake_mnist), num_steps=40), workdir)
    for step_dir in (workdir / run_dir.CHECKPOINT_DIR).iterdir():
        _strip_metadata(step_dir)
    _assert_same_params(train_and_evaluate(config, workdir), reference)


def test_a_checkpoint_without_digest_newer_than_one_with_it_is_corrupt(
    module_fake_mnist: Path, finished_run: tuple[Path, TrainState], tmp_path: Path
) -> None:
    config = small_config(data_dir=str(module_fake_mnist))
    reference = finished_run[1]
    workdir = _copy(finished_run, tmp_path / "run")
    _strip_metadata(workdir / run_dir.CHECKPOINT_DIR / "60")
    _flip_bytes(_largest_file(workdir / run_dir.CHECKPOINT_DIR / "60"))
    _assert_same_params(train_and_evaluate(config, workdir), reference)
    assert (workdir / checkpoints.CORRUPT_DIR / "60").is_dir()


def test_num_steps_refused_after_a_fallback_moves_nothing(
    module_fake_mnist: Path, finished_run: tuple[Path, TrainState], tmp_path: Path
) -> None:
    workdir = _copy(finished_run, tmp_path / "run")
    _flip_bytes(_largest_file(workdir / run_dir.CHECKPOINT_DIR / "60"))
    with pytest.raises(ValueError, match=r"config\.num_steps=30 is below step 40 of the checkpoint"):
        train_and_evaluate(small_config(data_dir=str(module_fake_mnist), num_steps=30), workdir)
    assert sorted(p.name for p in (workdir / run_dir.CHECKPOINT_DIR).iterdir()) == ["40", "60"]
    assert not (workdir / checkpoints.CORRUPT_DIR).exists()


def test_only_the_latest_corrupt_checkpoints_are_kept(
    module_fake_mnist: Path, finished_run: tuple[Path, TrainState], tmp_path: Path
) -> None:
    config = small_config(data_dir=str(module_fake_mnist))
    workdir = _copy(finished_run, tmp_path / "run")
    for _ in range(checkpoints.KEEP_CORRUPT + 1):  # a disk that corrupts checkpoint 60 again and again
        _flip_bytes(_largest_file(workdir / run_dir.CHECKPOINT_DIR / "60"))
        assert int(train_and_evaluate(config, workdir).step) == 60
    assert sorted(p.name for p in (workdir / checkpoints.CORRUPT_DIR).iterdir()) == ["60.1", "60.2"]


def test_the_command_line_falls_back_quietly(tmp_path: Path) -> None:
    """A damaged latest checkpoint under `bnrepro.main`: one warning line, none of orbax's leftover tracebacks."""
    command = [
        sys.executable, "-m", "bnrepro.main", "--config=configs/mnist_mlp.py:bn", f"--workdir={tmp_path}",
        "--config.num_steps=40", "--config.eval_every=20", "--config.checkpoint_every=20",
        "--config.steps_per_dispatch=20", "--config.population_batches=5",
    ]  # fmt: skip
    subprocess.run(command, cwd=REPO, capture_output=True, check=True, timeout=300)
    _truncate(_largest_file(tmp_path / run_dir.CHECKPOINT_DIR / "40"))
    resumed = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300, check=False)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert re.search(r"checkpoint 40 in .* is corrupt: .* Resuming from checkpoint 20", resumed.stderr)
    for noise in ("Traceback", "Exception ignored", "Event loop is closed"):
        assert noise not in resumed.stderr, resumed.stderr[-3000:]
