"""The accelerator check's dry run, as CI runs it: `scripts/accelerator_check.sh` on a machine without a GPU or
TPU collects the export test (tests/test_export.py), prints the devices, collects the tests marked `accelerator`
(this suite runs both on the CPU), runs a few steps of the MLP benchmark, reports the rest as skipped, and ends
with its results table."""

import re
import subprocess
from pathlib import Path

import jax
import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="the dry run is what a machine without accelerator runs")
def test_the_dry_run_runs_the_accelerator_tests_and_ends_with_its_table() -> None:
    result = subprocess.run(
        ["bash", "scripts/accelerator_check.sh"], cwd=REPO, capture_output=True, text=True, timeout=600, check=False
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    table = result.stdout[result.stdout.index("Accelerator check on cpu (dry run):") :].splitlines()
    rows = {cells[1].strip(): cells[2:] for cells in (line.split("|") for line in table[3:]) if len(cells) > 2}
    assert list(rows) == ["export", "devices", "tests", "bench_mnist", "bench_inception", "figure1", "sweep"]
    for step in ("export", "devices", "tests", "bench_mnist"):
        assert rows[step][0].strip() == "passed", table
    collected = re.search(r"\b(\d+)/\d+ tests collected", rows["tests"][2])  # "17/446 tests collected (429 ...)"
    assert collected and int(collected[1]) >= 10, rows["tests"]
    assert re.fullmatch(r"\d+ tests collected in .*", rows["export"][2].strip()), rows["export"]
    for step in ("bench_inception", "figure1", "sweep"):
        assert rows[step][0].strip() == "skipped" and "needs an accelerator" in rows[step][2]
    assert "cpu [CpuDevice(id=0)" in rows["devices"][2]
