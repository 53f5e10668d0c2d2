"""Test-session set-up: 8 simulated CPU devices for the multi-device tests; the shared fake-MNIST fixture.

XLA reads the flag once, when JAX starts, so it is set here, before any test module imports JAX.
Single-device code is unaffected: it runs on device 0.
"""

import os

_DEVICES_FLAG = "--xla_force_host_platform_device_count"
if _DEVICES_FLAG not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {_DEVICES_FLAG}=8".strip()

from pathlib import Path

import pytest
from fake_mnist import write_fake_mnist

import bnrepro.data


@pytest.fixture
def small_fake_mnist(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """1,200 + 300 fake examples, accepted by `load_dataset` in this process."""
    monkeypatch.setattr(bnrepro.data, "EXPECTED_COUNTS", {"train": 1_200, "test": 300})
    return write_fake_mnist(tmp_path / "mnist", {"train": 1_000, "valid": 200, "test": 300})
