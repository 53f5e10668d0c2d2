"""Test-session set-up: 8 simulated CPU devices for the multi-device tests; every Ray process on loopback; the
shared fake-MNIST fixture; the real Fashion-MNIST, fetched once into the data cache.

XLA reads the flag once, when JAX starts, so it is set here, before any test module imports JAX.
Single-device code is unaffected: it runs on device 0.
"""

import os
import shutil
import tempfile

_DEVICES_FLAG = "--xla_force_host_platform_device_count"
if _DEVICES_FLAG not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {_DEVICES_FLAG}=8".strip()
# Ray on 127.0.0.1 only, quiet (../shared/stack-notes.md); every Ray process the tests start inherits these. Heads
# the tests start themselves also take --node-ip-address=127.0.0.1; `bnrepro.sweep.engine` sets them for the
# local instances it starts.
os.environ.update(RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0", RAY_USAGE_STATS_ENABLED="0")
# On a GPU, each process (this one, Ray's workers, the scripts tests start) takes memory as it needs it, rather
# than 75% of the GPU at start (the accelerator check, scripts/accelerator_check.py).
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
# One persistent compilation cache for the whole run: the tests compile the same small programs many times, in this
# process, in the other xdist worker (it inherits the variable from the controller, which made the folder), in Ray's
# workers and in the scripts they start. Only the run that made the folder removes it (`pytest_unconfigure`).
_OWN_CACHE = "JAX_COMPILATION_CACHE_DIR" not in os.environ
if _OWN_CACHE:
    os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="bnrepro-tests-jax-cache-")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")
os.environ.setdefault("JAX_COMPILATION_CACHE_MAX_SIZE", str(4 << 30))  # a size limit makes JAX lock the folder:
# processes that compile one program at once (a sweep's groups) then never read each other's half-written entry

from collections.abc import Iterator
from pathlib import Path

import pytest
from fake_mnist import write_small_fake_mnist

from bnrepro.data import idx


@pytest.fixture
def small_fake_mnist(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """1,200 + 300 fake examples, accepted by `load_dataset` in this process."""
    return write_small_fake_mnist(tmp_path / "mnist", monkeypatch)


@pytest.fixture(scope="module")
def module_fake_mnist(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """`small_fake_mnist`, once for a module: for the module-scoped runs its tests share."""
    with pytest.MonkeyPatch.context() as monkeypatch:
        yield write_small_fake_mnist(tmp_path_factory.mktemp("mnist"), monkeypatch)


@pytest.fixture(scope="session")
def real_fashion_mnist() -> Path:
    """The folder of the real Fashion-MNIST IDX files in the data cache (the one the real-MNIST test reads),
    fetched there from the Debian package on first use; ``load_dataset("fashion_mnist")`` then finds them (or an
    installed copy, or $BNREPRO_FASHION_MNIST_DIR's, which it reads first)."""
    return idx.fetch_fashion_mnist()


def pytest_unconfigure(config: pytest.Config) -> None:
    if _OWN_CACHE:
        shutil.rmtree(os.environ["JAX_COMPILATION_CACHE_DIR"], ignore_errors=True)


# The longest files (`--durations`) start first, so that the two xdist workers (`--dist loadfile`: a file stays in
# one worker) end together rather than one running the last long file alone.
SLOWEST_FIRST = (
    "test_table2.py", "test_train.py", "test_sweep.py", "test_notebooks.py", "test_sweep_ray.py",
    "test_inception.py", "test_diagnostics.py", "test_layers.py", "test_imagenet_training.py", "test_group.py",
    "test_export.py", "test_lstm.py",
)  # fmt: skip


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    rank = {name: i for i, name in enumerate(SLOWEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: tests keep their order in a file
