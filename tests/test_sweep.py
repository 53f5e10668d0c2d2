"""Sweeps: expansion and naming, the default sweep files, and a sweep run end to end in Ray tasks on a
fake MNIST: one point finishing, one diverging, one raising in its worker; a point with a bad config refused
before anything starts; a re-run skipping what is done and finishing what
is not; the summary's numbers against each run's own metrics.jsonl."""

import csv
import functools
import importlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import ray
from fake_mnist import write_fake_mnist
from terminal import with_ctrl_c

from bnrepro import config_schema, sweep
from bnrepro.sweep import engine
from bnrepro.training import run_dir
from bnrepro.training.run_dir import CHECKPOINT_DIR, DIVERGED_FILE, METRICS_FILE

REPO = Path(__file__).resolve().parent.parent
SWEEP_FILE = """
from bnrepro.sweep import Sweep
from configs import mnist_mlp


def get_sweep():
    base = mnist_mlp.get_config("bn")
    base.data_dir = {data_dir!r}
    base.num_steps, base.eval_every, base.checkpoint_every, base.steps_per_dispatch = 300, 100, 100, 100
    base.population_batches = 5
    points = [
        {{"model.activation": "sigmoid", "learning_rate": 0.5}},
        {{"model.batch_norm": False, "model.activation": "relu", "model.init_std": 3.0, "learning_rate": 1e4}},
        {{"eval_examples": 20_000}},
    ]
    return Sweep(base, points, threshold=0.5)
"""
# The third point is valid (`check_points` lets it start) but fails in its worker: the fake test set holds 10,000.
FAILS_IN_ITS_WORKER = "config.eval_examples = 20000: more than the 10000 test examples."
LONG_SWEEP_FILE = """
from bnrepro.sweep import Sweep
from configs import mnist_mlp


def get_sweep():
    base = mnist_mlp.get_config("bn")
    base.data_dir = {data_dir!r}
    base.num_steps, base.eval_every, base.checkpoint_every, base.steps_per_dispatch = {num_steps}, 1_000, 1_000, 1_000
    base.population_batches = 5
    return Sweep(base, [{{"seed": 0}}], threshold=0.5)
"""
LONG_SWEEP_EVERY = 1_000  # its eval_every = checkpoint_every: a kill may fall between an evaluation and its checkpoint
# Steps the long point cannot reach while the test faults it, however fast the machine: it ends only when the
# test rewrites its sweep file with a length it can reach (num_steps may change between runs: RESUMABLE_CHANGES).
UNREACHABLE_STEPS = 10**9

EMPTY_SWEEP_FILE = """
from bnrepro.sweep import Sweep
from configs import mnist_mlp


def get_sweep():
    return Sweep(mnist_mlp.get_config("bn"), [], threshold=0.5)
"""


def test_product_and_point_names():
    points = sweep.product({"model.activation": ("sigmoid", "relu"), "learning_rate": (0.1, 3.0)})
    assert points == [
        {"model.activation": "sigmoid", "learning_rate": 0.1},
        {"model.activation": "sigmoid", "learning_rate": 3.0},
        {"model.activation": "relu", "learning_rate": 0.1},
        {"model.activation": "relu", "learning_rate": 3.0},
    ]
    assert sweep.point_name(points[1]) == "model.activation=sigmoid,learning_rate=3"
    assert sweep.point_name({"model.hidden": (10, 10)}) == "model.hidden=(10,10)"


def test_point_config_applies_overrides_and_names_a_bad_key():
    base = sweep.load_sweep("configs/sweeps/mnist_activation_bn.py").base
    config = sweep.point_config(base, {"model.activation": "relu", "learning_rate": 3, "seed": 2})
    assert (config.model.activation, config.learning_rate, config.seed) == ("relu", 3, 2)
    assert base.model.activation == "sigmoid" and base.seed == 0  # the base is not changed
    with pytest.raises(ValueError, match=r"config\.model\.activaton: unknown key"):
        sweep.point_config(base, {"model.activaton": "relu"})
    with pytest.raises(ValueError, match=r"config\.optimizer\.lr: no such section 'optimizer'"):
        sweep.point_config(base, {"optimizer.lr": 1.0})


def test_default_sweeps():
    full = sweep.load_sweep("configs/sweeps/mnist_activation_bn.py")
    assert len(full.points) == 2 * 2 * 3 * 3 and full.base.num_steps == 50_000 and full.base.dataset == "mnist"
    rates = sorted({p["learning_rate"] for p in full.points})
    assert rates == pytest.approx([0.1, 0.5, 3.0])
    fashion = sweep.load_sweep("configs/sweeps/mnist_activation_bn.py:fashion")
    assert fashion.base.dataset == "fashion_mnist" and len(fashion.points) == 36
    quick = sweep.load_sweep("configs/sweeps/mnist_activation_bn.py:quick")
    assert len(quick.points) == 4 and quick.base.num_steps == 600
    for point in full.points + quick.points:
        config_schema.validate(sweep.point_config(full.base, point))
    with pytest.raises(ValueError, match="bad argument 'slow'"):
        sweep.load_sweep("configs/sweeps/mnist_activation_bn.py:slow")


@pytest.mark.parametrize(
    ("name", "points", "quick_points"), [("init_scale", 2 * 2 * 5 * 3, 2), ("regularization", 2 * 3 * 3, 2)]
)
def test_the_claims_sweeps_full_and_quick_load_and_build(name, points, quick_points):
    """configs/sweeps/init_scale.py and regularization.py: every point's config is valid and builds its model
    (shapes only); the scales span 0.01x to 10x the default; the regularization runs train on 5,000 examples and
    evaluate them."""
    import jax
    import jax.numpy as jnp

    from bnrepro import models

    full, quick = (sweep.load_sweep(f"configs/sweeps/{name}.py{arg}") for arg in ("", ":quick"))
    assert (len(full.points), len(quick.points)) == (points, quick_points) and quick.base.num_steps == 300
    for spec in (full, quick):
        for point in spec.points:
            config = sweep.point_config(spec.base, point)
            config_schema.validate(config)
            model = models.create_model(config.model)
            shapes = jax.eval_shape(
                functools.partial(model.init, train=False), jax.random.key(0), jnp.zeros((2, 28, 28))
            )
            assert shapes["params"]["Dense_0"]["kernel"].shape == (100, 10)
    if name == "init_scale":
        scales = sorted({p["model.init_std"] for p in full.points})
        assert scales[0] <= 0.01 * full.base.model.init_std and scales[-1] >= 10 * full.base.model.init_std
        assert full.base.weight_norms_every > 0
    else:
        assert 60_000 - full.base.validation_size == full.base.eval_train_examples == 5000
        assert full.base.population_batches <= 5000 // full.base.batch_size  # Algorithm 2's, within an epoch
        assert {p["model.dropout_rate"] for p in full.points} == {0.0, 0.2, 0.5}
    with pytest.raises(ValueError, match=rf"configs/sweeps/{name}\.py: bad argument 'slow'"):
        sweep.load_sweep(f"configs/sweeps/{name}.py:slow")


def test_a_sweep_file_without_points_is_refused_in_one_line(tmp_path):
    spec = tmp_path / "empty.py"
    spec.write_text(EMPTY_SWEEP_FILE)
    with pytest.raises(ValueError, match=r"^--sweep=.*empty\.py: the sweep has no points\.$"):
        sweep.load_sweep(str(spec))


@pytest.mark.parametrize(
    "source, message",
    [
        ("def get_sweep(:\n    pass\n", r"bad\.py, line 1: invalid syntax\.$"),
        ("import no_such_module\n", r"bad\.py does not load: No module named 'no_such_module'\.$"),
        ("def get_sweeps():\n    pass\n", r"bad\.py defines no get_sweep\(\)\.$"),
    ],
)
def test_a_sweep_file_that_does_not_load_is_refused_in_one_line(tmp_path, source, message):
    spec = tmp_path / "bad.py"
    spec.write_text(source)
    with pytest.raises(ValueError, match=rf"^--sweep={re.escape(str(spec))}: .*{message}"):
        sweep.load_sweep(str(spec))
    if "syntax" in message:  # and the command says it in one line, exit 2
        result = _run_sweep_command(spec, tmp_path / "runs")
        assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-3000:]
        assert re.search(message, result.stderr.strip().splitlines()[-1]), result.stderr


def test_bad_points_are_refused_in_one_line_before_anything_starts(tmp_path):
    """A sweep file whose points include a bad value and a misspelt key: the command names the first bad point and
    its key, and the other, in one line, exit 2; nothing trained, nor did Ray start (no run directory, no token)."""
    spec = tmp_path / "bad.py"
    bad_points = '[{"learning_rate": 0.1}, {"learning_rate": -1.0}, {"model.activaton": "relu"}]'
    spec.write_text(EMPTY_SWEEP_FILE.replace("[]", bad_points))
    result = _run_sweep_command(spec, tmp_path / "runs")
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-3000:]
    line = result.stderr.strip().splitlines()[-1]
    assert re.match(r"error: sweep point learning_rate=-1: config\.learning_rate = -1\.0.* \(1 other points are "
                    r"refused too: model\.activaton=relu\) Nothing trained\.$", line), line  # fmt: skip
    assert "did you mean 'model.activation'" not in line  # the first point's error only, the others named
    runs = tmp_path / "runs"  # the sweep's token and run directories are written as Ray starts: none here
    assert not runs.exists() or [p.name for p in runs.iterdir()] in ([], [run_dir.LOCK_FILE]), list(runs.iterdir())


@pytest.fixture(scope="module")
def local_ray() -> Iterator[str]:
    """One local Ray instance (`engine.connect`, as `run_sweep` starts it) for this module's in-process sweeps,
    which find it connected rather than each starting its own, and for commands given its address; yields it."""
    engine.connect(None, num_cpus=2)
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()


@pytest.fixture(scope="module")
def finished_sweep(tmp_path_factory) -> tuple[Path, str, subprocess.CompletedProcess]:
    """The three-point sweep, run once by the command on a local Ray instance, two groups at once, each pinned to
    a core; its workdir, sweep file and the command's outcome."""
    root = tmp_path_factory.mktemp("sweep")
    data_dir = write_fake_mnist(root / "mnist", {"train": 50_000, "valid": 10_000, "test": 10_000})
    spec = root / "sweep.py"
    spec.write_text(SWEEP_FILE.format(data_dir=str(data_dir)))
    return root / "runs", str(spec), _run_sweep_command(spec, root / "runs", "--jobs=2")


def test_each_point_ends_in_its_own_directory_whatever_the_others_do(finished_sweep):
    workdir, spec, _ = finished_sweep
    finished, diverged, failed = (workdir / sweep.point_name(p) for p in sweep.load_sweep(spec).points)
    assert sweep.read_status(finished)["status"] == "finished"
    assert [json.loads(line)["step"] for line in (finished / METRICS_FILE).read_text().splitlines()] == [
        100, 200, 300,
    ]  # fmt: skip
    status = sweep.read_status(diverged)
    assert status["status"] == "diverged" and "diverged at step" in status["error"]
    assert (diverged / DIVERGED_FILE).exists()
    status = sweep.read_status(failed)
    assert status["status"] == "failed" and FAILS_IN_ITS_WORKER in status["error"]
    assert "Traceback" in status["traceback"]


def test_summary_rows_agree_with_the_runs_metrics(finished_sweep):
    workdir, spec, _ = finished_sweep
    with (workdir / sweep.SUMMARY_CSV).open() as f:
        rows = list(csv.DictReader(f))
    assert [r["status"] for r in rows] == ["finished", "diverged", "failed"]
    point = sweep.load_sweep(spec).points[0]
    records = [json.loads(line) for line in (workdir / sweep.point_name(point) / METRICS_FILE).open()]
    accuracies = [r["test_accuracy"] for r in records]
    assert float(rows[0]["final_accuracy"]) == accuracies[-1]
    assert float(rows[0]["best_accuracy"]) == max(accuracies)
    assert int(rows[0]["best_step"]) == records[accuracies.index(max(accuracies))]["step"]
    reached = [r["step"] for r in records if r["test_accuracy"] >= 0.5]
    assert reached, accuracies  # the learnable fake data: the threshold is reached, so the column is checked
    assert rows[0]["steps_to_threshold"] == str(reached[0])
    assert rows[1]["steps_to_threshold"] == rows[1]["final_accuracy"] == ""  # diverged before evaluating
    assert rows[0]["model.activation"] == "sigmoid" and float(rows[0]["learning_rate"]) == 0.5
    table = (workdir / sweep.SUMMARY_MD).read_text()
    assert "| steps to 50% |" in table and table.count("\n") == 2 + 3


def test_a_rerun_skips_done_points_and_finishes_the_others(finished_sweep, local_ray):
    workdir, spec, _ = finished_sweep
    points = sweep.load_sweep(spec).points
    finished = workdir / sweep.point_name(points[0])
    metrics = (finished / METRICS_FILE).read_text()
    diverged_log = workdir / sweep.point_name(points[1]) / "train.log"
    diverged_log_time = diverged_log.stat().st_mtime_ns
    (finished / sweep.STATUS_FILE).unlink()  # as if killed after its last checkpoint
    assert sweep.pending_points(sweep.load_sweep(spec), workdir) == [0, 2]  # the failed point is tried again
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(REPO)
        rows = sweep.run_sweep(spec, workdir, jobs=2)
    assert [r["status"] for r in rows] == ["finished", "diverged", "failed"]
    # Point 0 resumed from its step-300 checkpoint: nothing retrained, so not even the measured speeds changed.
    assert (finished / METRICS_FILE).read_text() == metrics
    assert diverged_log.stat().st_mtime_ns == diverged_log_time  # the diverged point was not launched again


def test_groups_join_points_that_differ_in_seed_and_learning_rate_only(tmp_path):
    full = sweep.load_sweep("configs/sweeps/mnist_activation_bn.py")
    groups = sweep.groups_of(full, range(len(full.points)), tmp_path, max_size=8)
    assert sorted(len(g) for g in groups) == [4, 4, 4, 4, 5, 5, 5, 5]  # 4 classes of 9 points, split 5 + 4
    for group in groups:
        varying = {k for i in group for k, v in full.points[i].items() if v != full.points[group[0]][k]}
        assert varying <= {"seed", "learning_rate"}
    assert sorted(i for g in groups for i in g) == list(range(36))
    assert len(sweep.groups_of(full, range(36), tmp_path, max_size=1)) == 36
    # A point with a checkpoint at another step than the rest of its class trains in a group of its own.
    (tmp_path / sweep.point_name(full.points[0]) / CHECKPOINT_DIR / "1000").mkdir(parents=True)
    assert [0] in sweep.groups_of(full, range(9), tmp_path, max_size=8)


SEEDED_SWEEPS = {  # sweep file: {its run directory for seed 0: the variant's own config}
    "figure1.py": {"mnist_baseline": ("mnist_mlp", "baseline"), "mnist_bn": ("mnist_mlp", "bn")},
    "small_batch.py": {"bn": ("mnist_small_batch", "bn"), "renorm": ("mnist_small_batch", "renorm")},
    "seq_rows.py": {
        "lstm_rows": ("seq_mnist", "lstm,rows"),
        "bn_lstm_rows": ("seq_mnist", "bn_lstm,rows"),
        "lstm_permuted_rows": ("seq_mnist", "lstm,permuted,rows"),
        "bn_lstm_permuted_rows": ("seq_mnist", "bn_lstm,permuted,rows"),
    },
    "table2.py:seeds=3": {v: ("fashion_table2", v) for v in ("inception", "bn_x30", "sigmoid")},
}


@pytest.mark.parametrize("spec", SEEDED_SWEEPS)
def test_a_seeded_sweep_trains_each_variant_of_its_config_file_with_only_the_seed_changed(spec):
    """Each point is its config file's variant (the single-run command's config) with `seed` set; seed 0 in
    the variant's directory, seed S in `NAME_seedS`, where `figures.seed_dirs` looks."""
    seeded = sweep.load_sweep(f"configs/sweeps/{spec}")
    seeds = (
        3 if "seeds=3" in spec else int(re.search(r"SEEDS = (\d+)", (REPO / "configs/sweeps" / spec).read_text())[1])
    )
    names = [seeded.run_name(i) for i in range(len(seeded.points))]
    for name, (module, variant) in SEEDED_SWEEPS[spec].items():
        for seed in range(seeds):
            run = name if seed == 0 else f"{name}_seed{seed}"
            expected = importlib.import_module(f"configs.{module}").get_config(variant)
            expected.seed = seed
            config = sweep.point_config(seeded.base, seeded.points[names.index(run)])
            assert run_dir.flatten(config.to_dict()) == run_dir.flatten(expected.to_dict()), run
    groups = sweep.groups_of(seeded, range(len(names)), Path("/nonexistent"), max_size=8)
    assert all(len({names[i].split("_seed")[0] for i in group}) == 1 or "table2" in spec for group in groups)
    assert len(names) == len(set(names)) == seeds * (len(SEEDED_SWEEPS[spec]) if "table2" not in spec else 6)


@pytest.mark.parametrize("spec", ["figure1.py:0", "small_batch.py:x", "seq_rows.py:-1"])
def test_a_bad_number_of_seeds_is_refused_naming_the_sweep_file(spec):
    with pytest.raises(ValueError, match=rf"configs/sweeps/{spec.split(':')[0]}: bad argument .*number of seeds"):
        sweep.load_sweep(f"configs/sweeps/{spec}")


def _start_long_sweep(tmp_path: Path) -> tuple[list[str], Path]:
    """The long one-point sweep's file, with a length it cannot reach, and command; returns the command and its
    workdir."""
    data_dir = write_fake_mnist(tmp_path / "mnist", {"train": 50_000, "valid": 10_000, "test": 10_000})
    _write_long_sweep(tmp_path, data_dir, UNREACHABLE_STEPS)
    workdir = tmp_path / "runs"
    return [sys.executable, "-m", "bnrepro.sweep", f"--sweep={tmp_path / 'long.py'}", f"--workdir={workdir}"], workdir


# How long the fault test waits for an event (a checkpoint, a worker's exit) before it calls the sweep stalled: a
# guard against a hang, never a measure of speed (a loaded machine takes longer; nothing is asserted about time).
STALL_S = 300


def _write_long_sweep(tmp_path: Path, data_dir: Path, num_steps: int) -> None:
    (tmp_path / "long.py").write_text(LONG_SWEEP_FILE.format(data_dir=str(data_dir), num_steps=num_steps))


def _training(workdir: Path, sweeper: subprocess.Popen, other_than: int, after: int) -> int:
    """Waits until a worker other than PID `other_than` holds the point's run directory lock (its file says
    "process PID on HOST (since ...)") and a checkpoint past step `after` exists; returns its PID."""
    deadline = time.monotonic() + STALL_S
    while True:
        if sweeper.poll() is not None or time.monotonic() > deadline:
            pytest.fail(f"the sweep ended or stalled before the fault:\n{sweeper.communicate()[0][-3000:]}")
        lock = workdir / "seed=0" / run_dir.LOCK_FILE
        found = re.match(r"process (\d+) ", lock.read_text()) if lock.exists() else None  # empty while rewritten
        holder = int(found[1]) if found else other_than
        if holder != other_than and _latest_step(workdir) > after:
            return holder
        time.sleep(0.1)


def _latest_step(workdir: Path) -> int:
    """The step of the point's latest finished checkpoint (0 if none), as the sweep reads it."""
    return sweep.latest_checkpoint(workdir / "seed=0") or 0


def _gone_within(pid: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while Path(f"/proc/{pid}").exists() and b"zombie" not in _status(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    return True


def _status(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/status").read_bytes().lower()
    except OSError:  # gone meanwhile
        return b""


def test_killed_and_stopped_workers_and_sweeps_lose_nothing_and_a_rerun_finishes(tmp_path):
    """One long point through six faults, each while it trains (it cannot reach its length meanwhile); every
    evaluation is recorded once at the end.
    1. SIGKILL of the Ray worker training the group: Ray retries the task (`--max_retries`) in a new worker,
       which resumes from the group's checkpoint;
    2. SIGTERM of that worker (its node preempted): it checkpoints at its next step boundary, says so in its log
       and exits; Ray retries the task, which resumes from that checkpoint;
    3. Ctrl-C of `python -m bnrepro.sweep`: the task is cancelled, its worker first checkpoints at its next
       boundary; one line, exit 130, no traceback;
    4. SIGTERM of the same command run again: the same path, exit 143;
    5. SIGKILL of the same command run a third time: Ray stops the tasks it owned (nothing trains on unwatched,
       nothing writes into the run directory after it);
    then the same command once more, its sweep file given a length past the point's latest checkpoint, finishes
    the point."""
    command, workdir = _start_long_sweep(tmp_path)
    log = workdir / "seed=0" / "train.log"
    popen = functools.partial(
        subprocess.Popen, with_ctrl_c(command), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    sweeper = popen()
    first = _training(workdir, sweeper, other_than=0, after=1_000)  # a good checkpoint before one a kill may tear
    os.kill(first, signal.SIGKILL)
    assert _gone_within(first, STALL_S)
    # Past the checkpoints the killed worker left: a new worker takes the lock before it resumes from them.
    retried = _training(workdir, sweeper, other_than=first, after=_latest_step(workdir))

    os.kill(retried, signal.SIGTERM)
    assert _gone_within(retried, STALL_S)
    stopped_at = _stopped_at(log, "SIGTERM")
    preempted = _training(workdir, sweeper, other_than=retried, after=stopped_at)
    assert f"Resumed from the checkpoint at step {stopped_at}." in log.read_text()

    for signum, exit_code in ((signal.SIGINT, 130), (signal.SIGTERM, 143)):
        sweeper.send_signal(signum)
        output, _ = sweeper.communicate(timeout=STALL_S)
        assert sweeper.returncode == exit_code, output[-3000:]
        name = signal.Signals(signum).name
        assert f"Interrupted by {name}: the groups are stopped; rerun the same command to resume them" in output
        assert "Stopping 1 groups: each checkpoints at its next step boundary" in output
        assert "Traceback" not in output, output[-3000:]
        assert _gone_within(preempted, STALL_S), f"the worker {preempted} outlived the sweep"
        assert _stopped_at(log, "SIGINT") == _latest_step(workdir)  # the cancelled task's worker checkpointed
        sweeper = popen()
        preempted = _training(workdir, sweeper, other_than=preempted, after=_latest_step(workdir))

    sweeper.kill()
    sweeper.communicate()
    assert _gone_within(preempted, STALL_S), f"the worker {preempted} outlived the sweep"
    assert sweep.read_status(workdir / "seed=0") is None  # it did not finish on its own

    # The next evaluation past the latest checkpoint and one more: the rerun resumes, evaluates and finishes.
    num_steps = _latest_step(workdir) + 2 * LONG_SWEEP_EVERY
    _write_long_sweep(tmp_path, tmp_path / "mnist", num_steps)
    rerun = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600, check=False)
    assert rerun.returncode == 0, rerun.stdout[-2000:] + rerun.stderr[-2000:]
    status = sweep.read_status(workdir / "seed=0")
    assert status["status"] == "finished" and status["pid"] not in (first, retried, preempted)
    records = [json.loads(line) for line in (workdir / "seed=0" / METRICS_FILE).read_text().splitlines()]
    assert status["num_steps"] == num_steps
    expected = list(range(LONG_SWEEP_EVERY, num_steps + 1, LONG_SWEEP_EVERY))
    assert [r["step"] for r in records] == expected  # every evaluation once
    text = log.read_text()
    assert text.count("--- ") == 6 and text.count("Resumed from the checkpoint") == 5  # each attempt appended


def _stopped_at(log: Path, name: str) -> int:
    """The step at which the latest attempt in the group's `log` says a signal `name` stopped it, its checkpoint
    saved."""
    found = re.findall(rf"stopped by {name} at step (\d+); checkpoint saved", log.read_text())
    assert found, f"no 'stopped by {name}' in {log}"
    return int(found[-1])


EDITABLE_SWEEP_FILE = """
from bnrepro.sweep import Sweep
from configs import mnist_mlp


def get_sweep():
    base = mnist_mlp.get_config("bn")
    base.data_dir = {data_dir!r}
    base.num_steps, base.eval_every, base.checkpoint_every, base.steps_per_dispatch = 100, 100, 100, 100
    base.population_batches = 5
    base.learning_rate = {learning_rate!r}
    return Sweep(base, {points!r}, threshold=0.5)
"""


def _run_sweep_command(spec: Path, workdir: Path, *extra: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "bnrepro.sweep", f"--sweep={spec}", f"--workdir={workdir}", *extra]
    return subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600, check=False)


def _summary(workdir: Path) -> list[dict[str, str]]:
    with (workdir / sweep.SUMMARY_CSV).open() as f:
        return list(csv.DictReader(f))


def test_an_edited_sweep_file_is_refused_or_with_restart_changed_retrained_keeping_the_old_run(
    tmp_path, local_ray, capsys, monkeypatch
):
    """The first training and the last rerun in this process (`run_sweep`, on the module's Ray instance); the
    refusal and the restart by the command (its exit status and output), the restart on that instance too."""
    data_dir = write_fake_mnist(tmp_path / "mnist", {"train": 50_000, "valid": 10_000, "test": 10_000})
    spec, workdir = tmp_path / "sweep.py", tmp_path / "runs"
    points = [{"seed": 0}, {"seed": 1}]
    spec.write_text(EDITABLE_SWEEP_FILE.format(data_dir=str(data_dir), learning_rate=0.5, points=points))
    monkeypatch.chdir(REPO)  # the sweep file imports configs/ as `python -m` run from the repo root does
    assert [r["status"] for r in sweep.run_sweep(str(spec), workdir)] == ["finished", "finished"]
    metrics = {name: (workdir / name / METRICS_FILE).read_text() for name in ("seed=0", "seed=1")}

    # The base config edited after the sweep finished: its points are refused, named with the key, and failed.
    spec.write_text(EDITABLE_SWEEP_FILE.format(data_dir=str(data_dir), learning_rate=0.25, points=points))
    refused = _run_sweep_command(spec, workdir)
    assert refused.returncode == 1, refused.stdout[-3000:] + refused.stderr[-3000:]
    for name in ("seed=0", "seed=1"):
        lines = [line for line in refused.stdout.splitlines() if line.startswith(f"{name}: refused:")]
        assert len(lines) == 1 and "(learning_rate: 0.5 -> 0.25)" in lines[0], refused.stdout
        assert "--restart_changed" in lines[0]
        assert (workdir / name / METRICS_FILE).read_text() == metrics[name]  # nothing retrained or lost
        assert sweep.read_status(workdir / name)["status"] == "finished"  # the old run's own record is kept
    assert "2 points: 0 already done, 2 refused, 0 to train" in refused.stdout
    assert "2 of 2 points failed: seed=0, seed=1" in refused.stdout
    rows = _summary(workdir)
    assert [r["status"] for r in rows] == ["failed", "failed"]
    assert all("config changed" in r["error"] and "learning_rate" in r["error"] for r in rows)
    assert all(r["final_accuracy"] == "" for r in rows)  # the old config's numbers are not shown as the new ones

    # num_steps may change (a finished point is resumed to the new length), so it alone is no refusal.
    assert sweep.changed_points(sweep.load_sweep(str(spec)), workdir) == {
        0: "learning_rate: 0.5 -> 0.25",
        1: "learning_rate: 0.5 -> 0.25",
    }

    plotted = _plot(spec, workdir)  # the plot refuses it too
    assert (
        plotted.returncode == 2
        and "2 of its points were trained with another config (e.g. seed=0: learning_rate: 0.5 -> 0.25)"
        in plotted.stderr
    )

    restarted = _run_sweep_command(spec, workdir, "--restart_changed", f"--address={local_ray}")
    assert restarted.returncode == 0, restarted.stdout[-3000:] + restarted.stderr[-3000:]
    assert restarted.stdout.count("its config changed (learning_rate: 0.5 -> 0.25); retraining it, the old run") == 2
    for name in ("seed=0", "seed=1"):
        (old,) = workdir.glob(f"{name}.old-*")
        assert (old / METRICS_FILE).read_text() == metrics[name]
        assert json.loads((old / "config.json").read_text())["learning_rate"] == 0.5
        assert json.loads((workdir / name / "config.json").read_text())["learning_rate"] == 0.25
        assert sweep.read_status(workdir / name)["status"] == "finished"
    assert [r["status"] for r in _summary(workdir)] == ["finished", "finished"]
    assert [r["status"] for r in sweep.run_sweep(str(spec), workdir)] == ["finished", "finished"]  # once more
    assert "2 points: 2 already done, 0 refused, 0 to train" in capsys.readouterr().out
    plotted = _plot(spec, workdir)  # a sweep of seeds only: one panel, a colour per point, no final-accuracy plot
    assert plotted.returncode == 0, plotted.stdout[-3000:] + plotted.stderr[-3000:]
    assert "no final-accuracy plot" in plotted.stdout and (workdir / "sweep_curves.png").exists()


def test_a_sweep_with_a_failed_point_exits_non_zero_with_its_summary_written(finished_sweep):
    workdir, _, result = finished_sweep
    assert result.returncode == 1, result.stdout[-3000:] + result.stderr[-3000:]
    assert "1 of 3 points failed: eval_examples=20000" in result.stdout
    row = _summary(workdir)[2]
    assert row["status"] == "failed" and FAILS_IN_ITS_WORKER in row["error"]
    assert "| failed |" in (workdir / sweep.SUMMARY_MD).read_text()


def _plot(spec: str | Path, workdir: Path) -> subprocess.CompletedProcess:
    command = [sys.executable, "scripts/plot_sweep.py", f"--sweep={spec}", f"--workdir={workdir}"]
    return subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600, check=False)


def test_plot_sweep_draws_the_sweeps_axes_and_refuses_another_sweep_without_touching_the_summary(finished_sweep):
    workdir, spec, _ = finished_sweep
    summary = {name: (workdir / name).read_bytes() for name in (sweep.SUMMARY_CSV, sweep.SUMMARY_MD)}
    summary_times = {name: (workdir / name).stat().st_mtime_ns for name in summary}
    for name in ("sweep_curves.png", "sweep_final.png"):
        (workdir / name).unlink(missing_ok=True)

    wrong = _plot("configs/sweeps/mnist_activation_bn.py:quick", workdir)
    assert wrong.returncode == 2, wrong.stdout[-3000:] + wrong.stderr[-3000:]
    assert (
        f"--sweep=configs/sweeps/mnist_activation_bn.py:quick does not match --workdir={workdir}: 4 of its 4 points "
        "have no run directory there (e.g. model.activation=sigmoid,model.batch_norm=True,learning_rate=0.1,seed=0). "
        "Nothing drawn."
    ) in wrong.stderr
    assert not (workdir / "sweep_curves.png").exists()

    right = _plot(spec, workdir)
    assert right.returncode == 0, right.stdout[-3000:] + right.stderr[-3000:]
    assert (workdir / "sweep_curves.png").stat().st_size > 0 and (workdir / "sweep_final.png").stat().st_size > 0
    assert summary["summary.md"].decode() in right.stdout
    for name, content in summary.items():  # plotting only reads
        assert (workdir / name).read_bytes() == content and (workdir / name).stat().st_mtime_ns == summary_times[name]
    keys, colour = sweep_plot_axes(spec)
    assert (keys, colour) == (
        ["model.activation", "model.batch_norm", "model.init_std", "eval_examples"],
        "learning_rate",
    )


def sweep_plot_axes(spec: str) -> tuple[list[str], str | None]:
    sys.path.insert(0, str(REPO / "scripts"))
    try:
        import plot_sweep

        return plot_sweep.axes(sweep.load_sweep(spec))
    finally:
        sys.path.remove(str(REPO / "scripts"))


def test_a_second_sweep_driver_on_one_workdir_is_refused_at_once(tmp_path: Path) -> None:
    """Two drivers on one sweep directory would train every point twice: the second stops before anything."""
    with run_dir.locked(tmp_path):
        second = subprocess.run(
            [sys.executable, "-m", "bnrepro.sweep", "--sweep=configs/sweeps/mnist_activation_bn.py:quick",
             f"--workdir={tmp_path}"],
            cwd=REPO, capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
    assert second.returncode == 2 and "Traceback" not in second.stderr, second.stderr[-2000:]
    assert f"error: {tmp_path} is in use by process {os.getpid()} on " in second.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == [run_dir.LOCK_FILE]  # no point directory, no summary
