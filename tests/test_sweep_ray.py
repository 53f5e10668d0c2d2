"""Sweeps on real Ray (`bnrepro.sweep.engine`): groups spread over the two nodes of a `ray.cluster_utils.Cluster`
on this machine; a declared GPU of its own for each group; every Ray process, its logs and its nodes on
127.0.0.1 only; a task whose node does not see the driver's workdir refused with a message that says so.

Ray workers load the fake MNIST through `load_dataset`'s check of the real split sizes (the `small_fake_mnist`
fixture patches it in this process only), so the fake here has MNIST's sizes; the nets train 100 steps.
"""

import contextlib
import csv
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import jax
import pytest
import ray
from fake_mnist import write_fake_mnist
from ray.cluster_utils import Cluster

from bnrepro import sweep
from bnrepro.sweep import engine
from bnrepro.training import run_dir
from configs import mnist_mlp

LOOPBACK = "127.0.0.1"
# Addresses that may appear in Ray's logs here: loopback, and the bind-all address of a listening socket.
ALLOWED_ADDRESSES = frozenset({LOOPBACK, "0.0.0.0"})
# A dotted quad standing alone: not part of a longer dotted or dashed token (a version such as `ray-2.60.0.1`,
# `v1.2.3.4`, `2.60.0.1.dev0`, `1.2.3.4.5`), each octet then checked (`ipv4_addresses`).
DOTTED_QUAD = re.compile(r"(?<![\w.+-])(\d{1,3})\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})(?![\w+-]|\.\w)")


def ipv4_addresses(text: str) -> set[str]:
    """The IPv4 addresses in `text`: stand-alone dotted quads of octets 0-255 written without leading zeros."""
    found = set()
    for match in DOTTED_QUAD.finditer(text):
        octets = match.groups()
        if all(o == "0" or (o[0] != "0" and int(o) <= 255) for o in octets):
            found.add(".".join(octets))
    return found


def ray_evidence() -> tuple[Path, list[dict[str, Any]]]:
    """The session directory of the Ray instance this process is connected to (its logs, sockets and node
    files; a `Cluster`'s nodes share the head's), and `ray.nodes()`. Call while connected."""
    context = ray.get_runtime_context()
    session = Path(context.get_temp_dir()) / context.get_session_name()
    assert session.is_dir() and (session / "logs").is_dir(), session
    return session, ray.nodes()


def assert_loopback_only(session: Path, nodes: list[Mapping[str, Any]]) -> None:
    """Fails, naming each address with the files it appears in and a line around it, if any IPv4 address but
    127.0.0.1 (or the bind-all 0.0.0.0) appears in the session's files or in `nodes`; also fails if no file
    named 127.0.0.1 (the scan would prove nothing)."""
    for node in nodes:
        assert node["NodeManagerAddress"] == LOOPBACK and node["NodeName"] == LOOPBACK, node
    where: dict[str, dict[str, str]] = {}  # address: {file: a line it appears in}
    for address in ipv4_addresses(repr(nodes)):
        where.setdefault(address, {})["ray.nodes()"] = repr(nodes)[:300]
    files = [p for p in session.rglob("*") if p.is_file()]  # sockets are not files
    assert any(p.parent.name == "logs" for p in files), f"no log files in {session}"
    for path in files:
        try:
            text = path.read_text(errors="replace")
        except OSError:  # gone meanwhile (a log rotated, a temporary file)
            continue
        for line in text.splitlines():
            for address in ipv4_addresses(line):
                where.setdefault(address, {}).setdefault(str(path.relative_to(session)), line.strip()[:300])
    print(f"IPv4 addresses in {session} ({len(files)} files) and ray.nodes():")
    for address, places in sorted(where.items()):
        print(f"  {address}: {len(places)} places, e.g. {sorted(places)[:4]}")
    others = {address: places for address, places in where.items() if address not in ALLOWED_ADDRESSES}
    assert set(where.get(LOOPBACK, {})) - {"ray.nodes()"}, f"no 127.0.0.1 in {session}: the scan read nothing useful"
    assert not others, "Ray used addresses other than loopback:\n" + "\n".join(
        f"{address} in {file}: {line}" for address, places in others.items() for file, line in places.items()
    )


def test_ipv4_addresses_finds_addresses_and_skips_versions_and_numbers() -> None:
    """The scan's address pattern: what `assert_loopback_only` would catch, and what it must not mistake for
    an address."""
    text = (
        "GCS at 192.0.2.2:6379, peer ipv4:10.1.2.3:44211, --node-ip-address=172.17.0.1 bound to 0.0.0.0; "
        "http://127.0.0.1:8265/ ok. address '198.51.100.7'."
    )
    assert ipv4_addresses(text) == {"192.0.2.2", "10.1.2.3", "172.17.0.1", "0.0.0.0", "127.0.0.1", "198.51.100.7"}
    not_addresses = (
        "ray-2.60.0.1 v1.2.3.4 2.60.0.1.dev0 2.60.0.1+cpu 1.2.3.4.5 300.1.1.1 1.2.3.256 01.02.03.04 "
        "2026-12-02 11:02:43,079 12.5.7 node_1.2.3.4 1.2.3.4-rc1"
    )
    assert ipv4_addresses(not_addresses) == set()


def test_assert_loopback_only_names_a_foreign_address_and_where_it_is(tmp_path: Path) -> None:
    """The scan fails on a session whose log names another address, saying which, in which file, on which
    line; and on a session where it found no address at all."""
    (tmp_path / "logs").mkdir()
    (tmp_path / "logs" / "raylet.out").write_text("listening on 127.0.0.1:6379\ndialing 192.0.2.2:41000\n")
    nodes = [{"NodeManagerAddress": LOOPBACK, "NodeName": LOOPBACK}]
    with pytest.raises(AssertionError, match=r"192\.0\.2\.2 in logs/raylet\.out: dialing 192\.0\.2\.2:41000"):
        assert_loopback_only(tmp_path, nodes)
    (tmp_path / "logs" / "raylet.out").write_text("nothing\n")
    with pytest.raises(AssertionError, match="the scan read nothing useful"):
        assert_loopback_only(tmp_path, nodes)


@pytest.fixture(autouse=True)
def no_ray_left_behind() -> Iterator[None]:
    """Each test starts with no Ray instance connected (a test module that leaked one is disconnected first)
    and leaves none behind."""
    ray.shutdown()
    try:
        yield
    finally:
        ray.shutdown()


@pytest.fixture(scope="module")
def fake_mnist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A learnable fake MNIST with the real split sizes (50k + 10k train, 10k test), written once."""
    root = tmp_path_factory.mktemp("mnist")
    return write_fake_mnist(root, {"train": 50_000, "valid": 10_000, "test": 10_000})


def tiny_sweep(data_dir: Path, seeds: range) -> sweep.Sweep:
    """The Figure 1 BN net, one point per seed, trained 100 steps (one dispatch, one evaluation, one
    checkpoint) on the fake MNIST."""
    base = mnist_mlp.get_config("bn")
    base.data_dir = str(data_dir)
    base.num_steps, base.eval_every, base.checkpoint_every, base.steps_per_dispatch = 100, 100, 100, 100
    base.population_batches = 5
    return sweep.Sweep(base, [{"seed": seed} for seed in seeds], threshold=0.5)


def statuses(spec: sweep.Sweep, workdir: Path) -> list[dict[str, Any]]:
    """Each point's `sweep_status.json`, in point order."""
    return [sweep.read_status(workdir / spec.run_name(i)) for i in range(len(spec.points))]


@pytest.fixture
def two_node_cluster() -> Iterator[Cluster]:
    """A Ray cluster of two nodes on this machine, one CPU each, every process on 127.0.0.1."""
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "node_ip_address": LOOPBACK})
    try:
        cluster.add_node(num_cpus=1, node_ip_address=LOOPBACK)
        yield cluster
    finally:
        ray.shutdown()
        cluster.shutdown()


def test_groups_spread_over_a_clusters_nodes_on_loopback_only(
    two_node_cluster: Cluster, fake_mnist: Path, tmp_path: Path
) -> None:
    """A sweep joining a running cluster by its address trains its four one-point groups on both nodes (each
    status names a node of the cluster) and summarizes all four; every Ray process stayed on loopback."""
    spec, workdir = tiny_sweep(fake_mnist, range(4)), tmp_path / "runs"
    rows = sweep.run_sweep(spec, workdir, group_size=1, address=two_node_cluster.address)
    session, nodes = ray_evidence()
    assert len(nodes) == 2 and all(node["Alive"] for node in nodes)
    ray.shutdown()  # the driver's logs complete before they are read

    found = statuses(spec, workdir)
    assert [s["status"] for s in found] == ["finished"] * 4, found
    assert [r["status"] for r in rows] == ["finished"] * 4
    assert {s["node_id"] for s in found} == {node["NodeID"] for node in nodes}  # both nodes, none else
    assert len({s["pid"] for s in found}) == 4  # a fresh worker process per group
    assert all(s["cuda_visible_devices"] in (None, "") for s in found)  # no GPU asked for
    with (workdir / sweep.SUMMARY_CSV).open() as f:
        summary = list(csv.DictReader(f))
    assert [(r["seed"], r["status"]) for r in summary] == [(str(i), "finished") for i in range(4)]
    assert all(r["final_accuracy"] and r["wall_seconds"] for r in summary), summary
    assert_loopback_only(session, nodes)


@pytest.mark.accelerator
def test_each_group_gets_a_gpu_of_its_own_and_all_the_cores(
    fake_mnist: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Groups asking for one GPU each run with CUDA_VISIBLE_DEVICES "0", "1", ..., one each, JAX on the GPU, and
    unpinned (pinning to cores is for CPU groups), and finish. On a machine without GPUs (this one) the instance
    declares 2 and JAX trains on the CPU."""
    gpus = jax.device_count() if jax.default_backend() == "gpu" else 0
    if not gpus:
        monkeypatch.setenv("JAX_PLATFORMS", "cpu")  # inherited by the instance's workers
    count = min(gpus, 2) or 2
    ray.init(num_cpus=2, num_gpus=count, include_dashboard=False, _node_ip_address=LOOPBACK, log_to_driver=False)
    spec, workdir = tiny_sweep(fake_mnist, range(count)), tmp_path / "runs"
    rows = sweep.run_sweep(spec, workdir, group_size=1, resources=engine.Resources(gpus_per_group=1))
    assert ray.cluster_resources()["GPU"] == count  # run_sweep used this instance rather than starting its own
    found = statuses(spec, workdir)
    assert [s["status"] for s in found] == ["finished"] * count, found
    assert sorted(s["cuda_visible_devices"] for s in found) == [str(i) for i in range(count)]
    assert {s["backend"] for s in found} == {"gpu" if gpus else "cpu"}
    assert all(s["cores"] == sorted(os.sched_getaffinity(0)) for s in found), found  # not pinned
    assert [r["status"] for r in rows] == ["finished"] * count


def test_a_local_sweep_keeps_every_ray_process_on_loopback(fake_mnist: Path, tmp_path: Path) -> None:
    """With no address and no Ray running, the sweep starts its own instance (`engine.connect`), with `jobs`
    CPUs; its nodes, logs and every other file of its session name no address but 127.0.0.1 (or 0.0.0.0)."""
    assert not ray.is_initialized()
    spec, workdir = tiny_sweep(fake_mnist, range(1)), tmp_path / "runs"
    rows = sweep.run_sweep(spec, workdir, jobs=1)
    assert ray.is_initialized() and ray.cluster_resources()["CPU"] == 1
    assert ray.util.get_node_ip_address() == LOOPBACK  # the driver's own address
    session, nodes = ray_evidence()
    ray.shutdown()
    assert [r["status"] for r in rows] == ["finished"]
    assert len(nodes) == 1
    assert statuses(spec, workdir)[0]["node_id"] == nodes[0]["NodeID"]
    assert_loopback_only(session, nodes)


# A process that has not set RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 itself (a user's shell) starts a local instance
# through `engine.connect`; finding the machine's interface address is refused (it would dial out), so the
# instance starts only if Ray never asks for it.
LOCAL_START_WITHOUT_ENVIRONMENT = """
from ray._private import services


def refuse(*args, **kwargs):
    raise RuntimeError("Ray asked for the interface address (it would dial out to find it)")


services.node_ip_address_from_perspective = refuse
from bnrepro.sweep import engine
from bnrepro.training import run_dir

engine.connect(None, num_cpus=1)
import ray

print("driver", ray.util.get_node_ip_address(), "nodes", sorted({n["NodeManagerAddress"] for n in ray.nodes()}))
ray.shutdown()
"""


def test_a_local_instance_stays_on_loopback_in_a_process_without_rays_environment() -> None:
    """`engine.connect` keeps a local instance on 127.0.0.1 by itself, in a process whose environment lacks
    the loopback settings (conftest sets them for the tests and their subprocesses)."""
    environment = {k: v for k, v in os.environ.items() if k != "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"}
    result = subprocess.run(
        [sys.executable, "-c", LOCAL_START_WITHOUT_ENVIRONMENT],
        env=environment, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "driver 127.0.0.1 nodes ['127.0.0.1']" in result.stdout


SHARED = "the sweep's --workdir must be on a filesystem all nodes share, at the same path"


def test_the_workdir_check_refuses_a_missing_or_foreign_token(tmp_path: Path) -> None:
    """`check_shared_workdir` passes on the sweep's own token and refuses a workdir without one, naming why."""
    with pytest.raises(RuntimeError, match=r"\.sweep_token is 'unreadable \(No such file or directory\)'") as e:
        engine.check_shared_workdir(tmp_path, "the-token")
    assert SHARED in str(e.value)
    (tmp_path / engine.TOKEN_FILE).write_text("the-token\n")
    engine.check_shared_workdir(tmp_path, "the-token")


def test_a_task_whose_node_sees_another_workdir_is_refused_and_its_point_failed(
    fake_mnist: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A node that sees another directory at the workdir's path: the driver's workdir is /proc/self/cwd/runs,
    and Ray's workers run in the folder the instance started in while the driver has moved on, so a task reads
    that folder's runs/ with another sweep's token. In a Ray task, `check_shared_workdir` raises; through
    `run_sweep`, the group fails before training, its point recorded failed with the reason in the summary."""
    node, driver = tmp_path / "node", tmp_path / "driver"
    (node / "runs").mkdir(parents=True)
    (node / "runs" / engine.TOKEN_FILE).write_text("another-sweeps-token\n")
    driver.mkdir()
    monkeypatch.chdir(node)
    ray.init(num_cpus=1, include_dashboard=False, _node_ip_address=LOOPBACK, log_to_driver=False)
    monkeypatch.chdir(driver)

    check = ray.remote(engine.check_shared_workdir)  # one worker for the three checks
    with pytest.raises(ray.exceptions.RayTaskError, match=re.escape(SHARED)) as e:
        ray.get(check.remote(node / "runs", "this-sweeps-token"))
    assert isinstance(e.value.cause, RuntimeError) and "'another-sweeps-token'" in str(e.value.cause)
    assert ray.get(check.remote(node / "runs", "another-sweeps-token")) is None

    workdir = Path("/proc/self/cwd/runs")  # driver/runs here, node/runs in a worker
    assert ray.get(check.remote(workdir, "another-sweeps-token")) is None  # what the test relies on
    spec = tiny_sweep(fake_mnist, range(1))
    (row,) = sweep.run_sweep(spec, workdir, resources=engine.Resources(max_retries=0))
    assert row["status"] == "failed" and SHARED in row["error"], row
    assert (driver / "runs" / engine.TOKEN_FILE).exists()  # the driver's token went to its own workdir
    assert sweep.read_status(driver / "runs" / spec.run_name(0))["error"].startswith("RuntimeError: ")
    assert sorted(p.name for p in (node / "runs").iterdir()) == [engine.TOKEN_FILE]  # nothing trained there


LONG_SWEEP_FILE = """
from bnrepro.sweep import Sweep
from configs import mnist_mlp


def get_sweep():
    base = mnist_mlp.get_config("bn")
    base.data_dir = {data_dir!r}
    base.num_steps, base.eval_every, base.checkpoint_every, base.steps_per_dispatch = 10**9, 1_000, 1_000, 1_000
    base.population_batches = 5
    return Sweep(base, [{{"seed": 0}}], threshold=0.5)
"""
# How long the test waits for an event (a port open, a checkpoint, a process's end) before it calls it a hang:
# never a measure of speed.
STALL_S = 300


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return s.getsockname()[1]


def _wait_for(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + STALL_S
    while not condition():
        assert time.monotonic() < deadline, f"stalled waiting for {what}"
        time.sleep(0.1)


def _accepts(port: int) -> bool:
    try:
        socket.create_connection((LOOPBACK, port), timeout=1).close()
        return True
    except OSError:
        return False


def test_cluster_trouble_is_one_line_no_cluster_no_token_and_a_head_gone_mid_sweep(
    fake_mnist: Path, tmp_path: Path
) -> None:
    """`python -m bnrepro.sweep --address=...` against: a port with nothing listening (one line naming the
    address, exit 2, within the seconds `engine.CONNECT_SECONDS` allows, where Ray alone retries for minutes); a
    head started with token authentication, joined without the token (one line naming RAY_AUTH_MODE, exit 2);
    the same head killed (SIGKILL of its processes) while the sweep trains (one line saying the cluster went away
    and that a rerun resumes, exit 75: `cli.EX_TEMPFAIL`). None of them prints a traceback."""
    (tmp_path / "long.py").write_text(LONG_SWEEP_FILE.format(data_dir=str(fake_mnist)))
    workdir = tmp_path / "runs"
    command = [sys.executable, "-m", "bnrepro.sweep", f"--sweep={tmp_path / 'long.py'}", f"--workdir={workdir}"]
    without_token = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH")}

    nothing = f"{LOOPBACK}:{_free_port()}"
    result = subprocess.run(
        [*command, f"--address={nothing}"], env=without_token, capture_output=True, text=True, timeout=STALL_S,
        check=False,
    )  # fmt: skip
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-3000:]
    assert (
        result.stderr.strip()
        .splitlines()[-1]
        .startswith(f"error: --address={nothing}: no Ray cluster answers at {nothing} (tried for 10 s).")
    ), result.stderr[-3000:]

    port = _free_port()
    with_token = {**without_token, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": os.urandom(16).hex()}
    head = subprocess.Popen(
        [os.path.join(os.path.dirname(sys.executable), "ray"), "start", "--head", f"--node-ip-address={LOOPBACK}",
         f"--port={port}", "--num-cpus=1", "--include-dashboard=false", "--block"],
        env=with_token, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    sweeper = None
    try:
        _wait_for(lambda: _accepts(port), "the head's GCS port")
        address = f"{LOOPBACK}:{port}"
        result = subprocess.run(
            [*command, f"--address={address}"], env=without_token, capture_output=True, text=True,
            timeout=STALL_S, check=False,
        )  # fmt: skip
        assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-3000:]
        line = result.stderr.strip().splitlines()[-1]
        assert line.startswith(f"error: --address={address}: the cluster at {address} wants its authentication "
                               "token: set RAY_AUTH_MODE=token"), result.stderr[-3000:]  # fmt: skip

        sweeper = subprocess.Popen(
            [*command, f"--address={address}"], env=with_token, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True,
        )  # fmt: skip
        checkpoints = workdir / "seed=0" / "checkpoints"
        _wait_for(lambda: sweeper.poll() is not None or sweep.latest_checkpoint(workdir / "seed=0"), "a checkpoint")
        assert sweeper.poll() is None, sweeper.communicate()[0][-3000:]
        os.killpg(head.pid, signal.SIGKILL)  # the head and every process it started
        output, _ = sweeper.communicate(timeout=STALL_S)
        assert sweeper.returncode == 75 and "Traceback" not in output, output[-3000:]
        line = output.strip().splitlines()[-1]
        assert line == (
            f"error: the Ray cluster's GCS at {address} stopped answering mid-sweep: 1 of 1 groups unfinished; "
            "rerun the same command on a running cluster to resume them from their checkpoints."
        ), output[-3000:]
        assert checkpoints.is_dir()
    finally:
        if sweeper is not None:
            sweeper.kill()
            sweeper.wait()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(head.pid, signal.SIGKILL)
        head.wait()
        _stop_the_runs_worker(workdir / "seed=0")


def _stop_the_runs_worker(run: Path) -> None:
    """Kills the process that holds the run directory's lock, if it outlived its cluster."""
    lock = run / run_dir.LOCK_FILE
    found = re.match(r"process (\d+) ", lock.read_text()) if lock.exists() else None
    if found:
        with contextlib.suppress(ProcessLookupError):
            os.kill(int(found[1]), signal.SIGKILL)
