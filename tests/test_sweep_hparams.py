"""A sweep's HParams summary (`bnrepro.sweep.hparams`), read back by TensorBoard's own HParams plugin backend (the
handlers behind the tab's GetExperiment and ListSessionGroups requests): one session per point named by its run
directory, with its overrides and status as hparams and its summary numbers as metrics; one experiment listing
every hparam and metric; a rewrite replacing the sessions; and the summary of real run directories end to end."""

import json
import subprocess
import sys
from pathlib import Path
from typing import Any, NamedTuple

import ml_collections
import pytest
from tensorboard import context
from tensorboard.backend.event_processing import data_provider, plugin_event_multiplexer
from tensorboard.plugins import base_plugin
from tensorboard.plugins.hparams import api_pb2, backend_context, get_experiment, list_session_groups

from bnrepro import sweep
from bnrepro.sweep import hparams
from bnrepro.training.run_dir import METRICS_FILE

REPO = Path(__file__).resolve().parent.parent
METRICS = ["final_accuracy", "best_accuracy", "steps_to_threshold"]


class Session(NamedTuple):
    hparams: dict[str, Any]
    metrics: dict[str, float]


class TensorBoardView(NamedTuple):
    """What TensorBoard's HParams tab is given: the runs, the experiment, and the sessions by name."""

    runs: list[str]
    experiment: api_pb2.Experiment
    sessions: dict[str, Session]


def _value(value: Any) -> Any:
    """A google.protobuf.Value's Python value."""
    return getattr(value, value.WhichOneof("kind"))


def tensorboard_view(logdir: Path) -> TensorBoardView:
    """Reads `logdir` as `tensorboard --logdir=LOGDIR` does and asks the HParams plugin's backend for the
    experiment and the session groups (every status allowed), as the tab does."""
    multiplexer = plugin_event_multiplexer.EventMultiplexer()
    multiplexer.AddRunsFromDirectory(str(logdir))
    multiplexer.Reload()
    provider = data_provider.MultiplexerDataProvider(multiplexer, str(logdir))
    backend = backend_context.Context(base_plugin.TBContext(logdir=str(logdir), data_provider=provider))
    request_context = context.RequestContext()
    experiment = get_experiment.Handler(request_context, backend, "", api_pb2.GetExperimentRequest()).run()
    request = api_pb2.ListSessionGroupsRequest(
        start_index=0, slice_size=1000, allowed_statuses=list(api_pb2.Status.values())
    )
    response = list_session_groups.Handler(request_context, backend, "", request).run()
    sessions = {}
    for group in response.session_groups:
        assert len(group.sessions) == 1, group  # each session is its own group
        (session,) = group.sessions
        sessions[session.name] = Session(
            {name: _value(value) for name, value in group.hparams.items()},
            {value.name.tag: value.value for value in session.metric_values},
        )
    assert len(sessions) == len(response.session_groups) == response.total_size
    return TensorBoardView(sorted(multiplexer.Runs()), experiment, sessions)


POINTS = {
    "model.activation=sigmoid,learning_rate=0.5,model.batch_norm=True": {
        "model.activation": "sigmoid",
        "learning_rate": 0.5,
        "model.batch_norm": True,
    },
    "model.activation=relu,learning_rate=30,model.batch_norm=False": {
        "model.activation": "relu",
        "learning_rate": 30,
        "model.batch_norm": False,
    },
    "model.hidden=(10,10),learning_rate=1": {"model.hidden": (10, 10), "learning_rate": 1},
}
ROWS = [
    {
        **POINTS["model.activation=sigmoid,learning_rate=0.5,model.batch_norm=True"],
        "status": "finished",
        "final_accuracy": 0.9375,
        "best_accuracy": 0.96875,
        "best_step": 200,
        "steps_to_threshold": 100,
        "wall_seconds": 3.5,
        "error": "",
    },
    {
        **POINTS["model.activation=relu,learning_rate=30,model.batch_norm=False"],
        "status": "diverged",
        "final_accuracy": 0.125,
        "best_accuracy": 0.25,
        "best_step": 100,
        "steps_to_threshold": None,
        "wall_seconds": 1.0,
        "error": "loss is nan",
    },
    {
        **POINTS["model.hidden=(10,10),learning_rate=1"],
        "status": "not run",
        "final_accuracy": None,
        "best_accuracy": None,
        "best_step": None,
        "steps_to_threshold": None,
        "wall_seconds": None,
        "error": "",
    },
]


def test_one_session_per_point_with_its_overrides_status_and_metrics(tmp_path):
    logdir = hparams.write_hparams(tmp_path, POINTS, ROWS)
    assert logdir == tmp_path / "hparams"
    view = tensorboard_view(logdir)
    assert view.runs == sorted([".", *POINTS])  # the experiment at the root, a run per point
    assert {info.name: info.type for info in view.experiment.hparam_infos} == {
        "model.activation": api_pb2.DATA_TYPE_STRING,
        "learning_rate": api_pb2.DATA_TYPE_FLOAT64,
        "model.batch_norm": api_pb2.DATA_TYPE_BOOL,
        "model.hidden": api_pb2.DATA_TYPE_STRING,
        "status": api_pb2.DATA_TYPE_STRING,
    }
    assert sorted(info.name.tag for info in view.experiment.metric_infos) == sorted(METRICS)
    assert view.sessions == {
        "model.activation=sigmoid,learning_rate=0.5,model.batch_norm=True": Session(
            {"model.activation": "sigmoid", "learning_rate": 0.5, "model.batch_norm": True, "status": "finished"},
            {"final_accuracy": 0.9375, "best_accuracy": 0.96875, "steps_to_threshold": 100.0},
        ),
        "model.activation=relu,learning_rate=30,model.batch_norm=False": Session(
            {"model.activation": "relu", "learning_rate": 30.0, "model.batch_norm": False, "status": "diverged"},
            {"final_accuracy": 0.125, "best_accuracy": 0.25},  # never reached the threshold
        ),
        "model.hidden=(10,10),learning_rate=1": Session(
            {"model.hidden": "(10, 10)", "learning_rate": 1.0, "status": "not run"}, {}
        ),
    }


def test_a_key_with_values_of_different_kinds_is_a_string_everywhere(tmp_path):
    points = {"a": {"model.activation": "relu", "seed": 0}, "b": {"model.activation": None, "seed": True}}
    rows = [{**p, "status": "finished", "final_accuracy": 0.5} for p in points.values()]
    view = tensorboard_view(hparams.write_hparams(tmp_path, points, rows))
    types = {info.name: info.type for info in view.experiment.hparam_infos}
    assert types["model.activation"] == types["seed"] == api_pb2.DATA_TYPE_STRING
    assert {name: session.hparams for name, session in view.sessions.items()} == {
        "a": {"model.activation": "relu", "seed": "0", "status": "finished"},
        "b": {"model.activation": "None", "seed": "True", "status": "finished"},
    }


def test_a_rewrite_replaces_the_sessions(tmp_path):
    hparams.write_hparams(tmp_path, POINTS, ROWS)
    first, *_ = POINTS
    rows = [{**ROWS[0], "status": "finished", "final_accuracy": 0.5}]
    logdir = hparams.write_hparams(tmp_path, {first: POINTS[first]}, rows)
    view = tensorboard_view(logdir)
    assert view.runs == [".", first]
    assert list(view.sessions) == [first]
    assert view.sessions[first].metrics["final_accuracy"] == 0.5
    assert [len(list(logdir.glob(f"{run}/events.out.tfevents.*"))) for run in view.runs] == [1, 1]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hparams"]  # no temporary folder left


def test_mismatched_rows_are_refused(tmp_path):
    with pytest.raises(ValueError, match="3 points but 2 summary rows"):
        hparams.write_hparams(tmp_path, POINTS, ROWS[:2])
    assert list(tmp_path.iterdir()) == []


def _write_run(run_dir: Path, status: dict[str, Any], accuracies: dict[int, float]) -> None:
    """A point's run directory as a sweep leaves it: `sweep_status.json` and the evaluations' metrics.jsonl."""
    run_dir.mkdir()
    (run_dir / sweep.STATUS_FILE).write_text(json.dumps(status))
    records = [{"step": step, "test_accuracy": accuracy, "train_loss": 0.1} for step, accuracy in accuracies.items()]
    (run_dir / METRICS_FILE).write_text("".join(json.dumps(record) + "\n" for record in records))


def test_the_sweep_summary_writes_the_hparams_of_its_run_directories(tmp_path):
    points = [
        {"model.activation": "sigmoid", "learning_rate": 1.0},
        {"model.activation": "relu", "learning_rate": 1.0},
        {"model.activation": "relu", "learning_rate": 30.0},
        {"model.activation": "tanh", "learning_rate": 1.0},
    ]
    names = [sweep.point_name(p) for p in points]
    _write_run(tmp_path / names[0], {"status": "finished", "num_steps": 300}, {100: 0.4, 200: 0.9, 300: 0.8})
    _write_run(tmp_path / names[1], {"status": "finished", "num_steps": 300}, {100: 0.3, 200: 0.6, 300: 0.7})
    _write_run(tmp_path / names[2], {"status": "diverged", "error": "nan", "num_steps": 300}, {100: 0.1})
    config_change = "config changed since it was trained: seed: 0 -> 1"
    _write_run(tmp_path / names[3], {"status": "finished", "num_steps": 300}, {100: 0.95})
    rows = sweep.write_summary(
        sweep.Sweep(ml_collections.ConfigDict(), points, 0.85), tmp_path, {names[3]: config_change}
    )

    view = tensorboard_view(tmp_path / "hparams")
    assert view.runs == sorted([".", *names])
    expected = {
        names[0]: Session(
            {"model.activation": "sigmoid", "learning_rate": 1.0, "status": "finished"},
            {"final_accuracy": 0.8, "best_accuracy": 0.9, "steps_to_threshold": 200.0},
        ),
        names[1]: Session(
            {"model.activation": "relu", "learning_rate": 1.0, "status": "finished"},
            {"final_accuracy": 0.7, "best_accuracy": 0.7},
        ),
        names[2]: Session(
            {"model.activation": "relu", "learning_rate": 30.0, "status": "diverged"},
            {"final_accuracy": 0.1, "best_accuracy": 0.1},
        ),
        names[3]: Session({"model.activation": "tanh", "learning_rate": 1.0, "status": "failed"}, {}),  # refused
    }
    assert view.sessions.keys() == expected.keys()
    for name, row in zip(names, rows):  # the summary's own numbers, as float32 scalars
        assert view.sessions[name].hparams == expected[name].hparams
        assert view.sessions[name].metrics.keys() == expected[name].metrics.keys()
        for tag, value in view.sessions[name].metrics.items():
            assert abs(value - row[tag]) < 1e-6 and abs(value - expected[name].metrics[tag]) < 1e-6


def test_the_module_imports_only_tensorboardx_and_the_standard_library():
    """Loaded alone from its file, outside the sweep package (which imports jax): no jax, no bnrepro."""
    code = (
        "import importlib.util, json, sys\n"
        f"spec = importlib.util.spec_from_file_location('hparams', {str(REPO / 'bnrepro/sweep/hparams.py')!r})\n"
        "spec.loader.exec_module(importlib.util.module_from_spec(spec))\n"
        "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    loaded = json.loads(result.stdout.splitlines()[-1])
    assert "tensorboardX" in loaded
    assert not {"jax", "jaxlib", "flax", "bnrepro", "tensorflow"} & set(loaded)
