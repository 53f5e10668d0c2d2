"""`config.profile_steps`: a `jax.profiler` trace of the steps START:END in `WORKDIR/plugins/profile/`, the run
otherwise unchanged; where the trace starts and stops (whole dispatches, resumed runs); the values refused."""

import gzip
import json
from collections import Counter
from pathlib import Path

import jax
import numpy as np
import pytest
from config_files import mnist_mlp
from training_run import small_config, train_and_evaluate

from bnrepro import config_schema
from bnrepro.hooks import from_config
from bnrepro.training import loop, run_dir

# --- A real run ----------------------------------------------------------------------------------------------


def _metrics(workdir: Path) -> list[dict]:
    """`metrics.jsonl` without the timings."""
    return [{k: v for k, v in r.items() if k != "steps_per_second"} for r in run_dir.read_records(workdir)]


def test_a_profiled_run_writes_a_trace_and_is_otherwise_unchanged(small_fake_mnist: Path, tmp_path: Path) -> None:
    """60 steps in dispatches of 20: "20:40" is one of them; "25:35" splits two dispatches (20:25, 25:35, 35:40),
    which changes no bit (splitting a dispatch is exact: test_train.py's test_splitting_a_dispatch_changes_nothing).
    The default "" writes no plugins/ folder."""
    plain = train_and_evaluate(small_config(data_dir=str(small_fake_mnist)), tmp_path / "plain")
    assert small_config().profile_steps == ""
    assert not (tmp_path / "plain" / "plugins").exists()
    for profile_steps in ("20:40", "25:35"):
        workdir = tmp_path / f"profiled_{profile_steps.replace(':', '_')}"
        config = small_config(data_dir=str(small_fake_mnist), profile_steps=profile_steps)
        profiled = train_and_evaluate(config, workdir)

        (trace,) = (workdir / "plugins" / "profile").glob("*/*.xplane.pb")  # TensorBoard's profile plugin reads it
        assert trace.stat().st_size > 0
        (events,) = trace.parent.glob("*.trace.json.gz")  # the same trace for Perfetto / chrome://tracing
        names = Counter(e.get("name", "") for e in json.loads(gzip.decompress(events.read_bytes()))["traceEvents"])
        assert any("train_steps" in name for name in names), "the training program ran inside the trace"
        # XLA:CPU records each run of a fused op; most of them are the scanned step's, run once per traced step.
        start, end = map(int, profile_steps.split(":"))
        runs = Counter(n for name, n in names.items() if name.endswith("fusion") or "fusion." in name)
        assert runs.most_common(1)[0][0] == end - start
        final = (profiled.step, profiled.params, profiled.batch_stats, profiled.opt_state)
        jax.tree.map(
            np.testing.assert_array_equal, (plain.step, plain.params, plain.batch_stats, plain.opt_state), final
        )
        assert _metrics(workdir) == _metrics(tmp_path / "plain")
        assert [r["step"] for r in run_dir.read_records(workdir)] == [20, 40, 60]


# --- Where the trace starts and stops ------------------------------------------------------------------------


def _traced_dispatches(monkeypatch: pytest.MonkeyPatch, profile_steps: str, start: int = 0, **overrides) -> list:
    """The loop's dispatches from step `start` (as (first step, last step) pairs), the traced ones marked: the
    loop's `_next_boundary` and `_Profiler` driven as `train_models` drives them, with the profiler recorded."""
    events = []
    monkeypatch.setattr(jax.profiler, "start_trace", lambda log_dir: events.append("start"))
    monkeypatch.setattr(jax.profiler, "stop_trace", lambda: events.append("stop"))
    monkeypatch.setattr(jax, "block_until_ready", lambda x: events.append("ready") or x)
    config = small_config(profile_steps=profile_steps, **overrides)
    config_schema.validate(config)
    dispatches, step, tracing = [], start, False
    with loop._Profiler(config, Path("unused"), primary=True) as profiler:
        while step < config.num_steps:
            profiler.before(step)
            tracing = tracing or events[-1:] == ["start"]
            boundary = loop._next_boundary(step, config, from_config(config))
            dispatches.append((step, boundary, "traced" if tracing else ""))
            step = boundary
            profiler.after(step, loop.TrainChunk(state=None, losses=None, compile_seconds=0.0))
            if events[-2:] == ["ready", "stop"]:
                tracing = False
    assert events in ([], ["start", "ready", "stop"])  # one trace, stopped once the last traced dispatch is done
    return dispatches


def test_the_profiled_range_is_a_dispatch_boundary(monkeypatch: pytest.MonkeyPatch) -> None:
    assert _traced_dispatches(monkeypatch, "25:35") == [
        (0, 20, ""), (20, 25, ""), (25, 35, "traced"), (35, 40, ""), (40, 60, ""),
    ]  # fmt: skip
    assert _traced_dispatches(monkeypatch, "20:40", steps_per_dispatch=10) == [
        (0, 10, ""), (10, 20, ""), (20, 30, "traced"), (30, 40, "traced"), (40, 50, ""), (50, 60, ""),
    ]  # fmt: skip
    assert _traced_dispatches(monkeypatch, "50:100")[-2:] == [(40, 50, ""), (50, 60, "traced")]  # END clipped
    assert _traced_dispatches(monkeypatch, "") == [(0, 20, ""), (20, 40, ""), (40, 60, "")]


def test_a_resumed_run_traces_what_is_left_of_the_range(monkeypatch: pytest.MonkeyPatch) -> None:
    assert _traced_dispatches(monkeypatch, "20:40", start=30) == [(30, 40, "traced"), (40, 60, "")]
    assert _traced_dispatches(monkeypatch, "20:40", start=40) == [(40, 60, "")]  # resumed past the range


def test_only_process_0_traces(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(jax.profiler, "start_trace", lambda log_dir: pytest.fail("process 1 traced"))
    with loop._Profiler(small_config(profile_steps="0:20"), Path("unused"), primary=False) as profiler:
        profiler.before(0)


# --- Values ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["10", "20:10", "20:20", "a:b", "-1:5", "1:5:9", " 1:5", "1.5:3"])
def test_bad_values_are_refused_naming_the_key(value: str) -> None:
    config = mnist_mlp.get_config("bn")
    config.profile_steps = value
    with pytest.raises(ValueError, match=rf"^config\.profile_steps = '{value}': must be START:END with 0 <= START"):
        config_schema.validate(config)


def test_a_range_the_run_never_reaches_is_refused_an_end_past_it_clipped() -> None:
    config = small_config(profile_steps="60:70")  # num_steps = 60
    with pytest.raises(ValueError, match=r"^config\.profile_steps = '60:70': starts at or after num_steps = 60"):
        config_schema.validate(config)
    config.profile_steps = "0:1000"
    config_schema.validate(config)
    assert config_schema.profile_range(config) == (0, 60)
    config.profile_steps = ""
    assert config_schema.profile_range(config) is None


def test_a_run_resumes_under_another_profile_steps() -> None:
    """Tracing changes nothing computed: a run made without the key (an older one) or with another range resumes."""
    config = small_config(profile_steps="100:110", num_steps=200)
    recorded = run_dir.config_json(small_config(num_steps=200))
    assert run_dir.config_changes(recorded, config) == {}
    del recorded["profile_steps"]
    assert run_dir.config_changes(recorded, config) == {}
