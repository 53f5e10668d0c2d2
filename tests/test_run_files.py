"""A run directory's files under faults: a second process on the same workdir, a killed holder, a torn or
damaged line in metrics.jsonl, a write that fails half way (`bnrepro.training.run_dir`)."""

import errno
import json
import logging
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from training_run import small_config, train_and_evaluate

from bnrepro.training import run_dir
from bnrepro.training.run_dir import CHECKPOINT_DIR, METRICS_FILE

REPO = Path(__file__).resolve().parent.parent


def test_a_second_process_is_refused_at_once_and_writes_nothing(tmp_path: Path) -> None:
    workdir = tmp_path / "run"
    workdir.mkdir()
    unreadable = tmp_path / "not_a_directory"  # a run that read its data would stop with a data error instead
    unreadable.write_text("")
    with run_dir.locked(workdir):  # returns while the lock is held: refused, not queued
        second = subprocess.run(
            [sys.executable, "-m", "bnrepro.main", "--config=configs/mnist_mlp.py:bn", f"--workdir={workdir}",
             f"--config.data_dir={unreadable}"],
            cwd=REPO, capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
    assert second.returncode == 2, second.stderr[-2000:]
    assert f"is in use by process {os.getpid()} on {socket.gethostname()}" in second.stderr
    assert second.stderr.strip().splitlines()[-1].startswith("error: ")  # one line, no traceback
    assert "Traceback" not in second.stderr
    assert sorted(p.name for p in workdir.iterdir()) == [run_dir.LOCK_FILE]  # no metrics, config or checkpoints


def test_in_process_the_loop_is_refused_too_and_the_lock_is_released_after_an_error(
    small_fake_mnist: Path, tmp_path: Path
) -> None:
    config = small_config(data_dir=str(small_fake_mnist), num_steps=20)
    with run_dir.locked(tmp_path / "run"), pytest.raises(run_dir.WorkdirBusyError, match="is in use by process"):
        train_and_evaluate(config, tmp_path / "run")
    bad = config.copy_and_resolve_references()
    bad.learning_rate = 0.5  # a config the workdir's run was not made with: refused after the lock is taken
    train_and_evaluate(config, tmp_path / "run")
    with pytest.raises(ValueError, match="holds a run with learning_rate"):
        train_and_evaluate(bad, tmp_path / "run")
    with run_dir.locked(tmp_path / "run"):  # released by the failed run
        pass


def test_the_lock_of_a_killed_process_never_blocks(tmp_path: Path) -> None:
    program = (
        "import sys; from pathlib import Path; from bnrepro.training import run_dir\n"
        "with run_dir.locked(Path(sys.argv[1])):\n    print('held', flush=True); sys.stdin.read()"
    )  # holds the lock until it is killed (its stdin stays open)
    holder = subprocess.Popen(
        [sys.executable, "-c", program, str(tmp_path)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(run_dir.WorkdirBusyError, match=f"process {holder.pid} on "), run_dir.locked(tmp_path):
            pass
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait(timeout=30)
    finally:
        holder.kill()
    with run_dir.locked(tmp_path):  # at once: the kernel released the dead holder's lock
        assert f"process {os.getpid()} " in (tmp_path / run_dir.LOCK_FILE).read_text()


def test_a_torn_last_line_is_dropped_with_a_warning_and_the_run_resumes(
    small_fake_mnist: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A kill or a full disk while appending the evaluation after the last checkpoint leaves half a line."""
    config = small_config(data_dir=str(small_fake_mnist), num_steps=20, eval_every=10)
    workdir = tmp_path / "run"
    train_and_evaluate(config, workdir)
    with (workdir / METRICS_FILE).open("a") as f:
        f.write('{"step": 30, "train_loss": 0.4, "test_los')
    config.num_steps = 40
    with caplog.at_level(logging.WARNING):
        train_and_evaluate(config, workdir)
    assert any(
        "dropped its torn last line" in r.getMessage() and METRICS_FILE in r.getMessage() for r in caplog.records
    )
    assert [r["step"] for r in run_dir.read_records(workdir)] == [10, 20, 30, 40]


def test_a_damaged_line_before_the_last_is_named(small_fake_mnist: Path, tmp_path: Path) -> None:
    config = small_config(data_dir=str(small_fake_mnist), num_steps=20, eval_every=10)
    workdir = tmp_path / "run"
    train_and_evaluate(config, workdir)
    lines = (workdir / METRICS_FILE).read_text().splitlines()
    (workdir / METRICS_FILE).write_text("\n".join([lines[0][:-5], *lines[1:]]) + "\n")
    config.num_steps = 40
    with pytest.raises(ValueError, match=rf"{METRICS_FILE}, line 1: not a JSON record .* the file is damaged"):
        train_and_evaluate(config, workdir)
    with pytest.raises(ValueError, match=rf"{METRICS_FILE}, line 1: not a JSON record"):
        run_dir.read_records(workdir)
    assert (workdir / CHECKPOINT_DIR).is_dir()  # nothing deleted


def test_a_write_that_fails_half_way_leaves_the_old_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "config.json"
    path.write_text('{"learning_rate": 0.1}\n')

    def disk_full(descriptor: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", disk_full)
    with pytest.raises(OSError, match="No space left on device"):
        run_dir.write_atomically(path, json.dumps({"learning_rate": 0.2}) + "\n")
    assert path.read_text() == '{"learning_rate": 0.1}\n'
    assert [p.name for p in tmp_path.iterdir()] == ["config.json"]  # no temporary file left behind


def _mount_small_disk(path: Path, size: str) -> None:
    path.mkdir(exist_ok=True)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True, check=False
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a small tmpfs needs root")
def test_a_full_disk_is_two_clear_lines_and_the_run_resumes_once_space_is_freed(tmp_path: Path) -> None:
    disk = tmp_path / "disk"
    _mount_small_disk(disk, "600k")  # room for the run's files and one checkpoint, not two
    try:
        command = [
            sys.executable, "-m", "bnrepro.main", "--config=configs/mnist_mlp.py:bn", f"--workdir={disk / 'run'}",
            "--config.num_steps=3000", "--config.eval_every=500", "--config.checkpoint_every=500",
        ]  # fmt: skip
        full = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300, check=False)
        assert full.returncode == 1, full.stderr[-3000:]
        last = full.stderr.strip().splitlines()[-2:]
        assert last[0].startswith("error: no space left on device while writing "), full.stderr[-3000:]
        assert last[1].startswith("Free some space and rerun the same command")
        for noise in ("Traceback", "Event loop is closed", "Exception ignored", "\nE1", "\nW1"):
            assert noise not in full.stderr, full.stderr[-3000:]

        subprocess.run(["mount", "-o", "remount,size=64m", str(disk)], check=True)  # space freed
        resumed = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300, check=False)
        assert resumed.returncode == 0, resumed.stderr[-3000:]
        assert "Resumed from the checkpoint" in resumed.stderr
        assert [r["step"] for r in run_dir.read_records(disk / "run")] == list(range(500, 3001, 500))
    finally:
        subprocess.run(["umount", str(disk)], check=False)


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a small tmpfs needs root")
def test_a_metrics_record_that_meets_a_full_disk_names_its_file(tmp_path: Path) -> None:
    """A full disk can be met by the metrics record rather than the checkpoint (orbax saves in the background and
    frees its partial checkpoint when the save fails): the message names metrics.jsonl, and TensorBoard's writer,
    whose `atexit` callback flushes again, leaves no traceback at exit."""
    disk = tmp_path / "disk"
    _mount_small_disk(disk, "64k")
    script = f"""
import sys
from pathlib import Path
from bnrepro import cli
from bnrepro.training import run_dir
cli.quiet_orbax()
writer = run_dir.MetricsWriter(Path({str(disk)!r}), resume_step=0)
try:
    (Path({str(disk)!r}) / "filler").write_bytes(b"x" * 200_000)  # more than the disk holds: it is full
except OSError:
    pass
try:
    writer.write({{"step": 1, "note": "x" * 100_000}})
except OSError as e:
    print(cli.disk_full_message(e))
"""
    try:
        result = subprocess.run(
            [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=False
        )
    finally:
        subprocess.run(["umount", str(disk)], check=False)
    assert result.stdout.startswith(f"no space left on device while writing {disk / METRICS_FILE}."), result
    assert "Traceback" not in result.stderr and "Exception ignored" not in result.stderr, result.stderr


def test_the_console_drops_only_tensorboards_writer_thread_errors() -> None:
    """After a full disk stopped TensorBoard's `close` half-way, its writer thread meets its queue closed at exit
    ("handle is closed"): `cli.quiet_orbax` keeps that traceback off the console, and any other thread's error on it."""
    script = """
import threading
from bnrepro import cli
cli.quiet_orbax()
namespace = {}
exec(compile("def run():\\n    raise OSError('handle is closed')\\n", "/v/tensorboardX/event_file_writer.py", "exec"),
     namespace)
def other():
    raise OSError("another thread's error")
for target in (namespace["run"], other):
    thread = threading.Thread(target=target)
    thread.start()
    thread.join()
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True)
    assert "handle is closed" not in result.stderr and "another thread's error" in result.stderr, result.stderr
