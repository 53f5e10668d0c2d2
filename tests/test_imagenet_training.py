"""The five ImageNet runs of Table 2 as configs, and the host-fed training loop they use, on tfds mock data.

The loop is `train_and_evaluate`, the same one MNIST uses; here its data are `HostFedData` (grain
pipeline on the host). The network is swapped for a small MLP so that a test trains in seconds; the configs'
own network is BN-Inception, whose shapes tests/test_inception.py checks.
"""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import warnings
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest
import tensorflow_datasets as tfds
from config_files import IMAGENET_RUNS
from config_files import imagenet as imagenet_configs
from imagenet_mock import MULTIHOST_RUN, NUM_EXAMPLES, SIZE, small_config
from training_run import train_and_evaluate

from bnrepro import config_schema, diagnostics
from bnrepro.data import imagenet
from bnrepro.models import create_model
from bnrepro.training.inputs import HostFedData
from bnrepro.training.loop import HostFedSteps
from bnrepro.training.run_dir import CHECKPOINT_DIR, DIAGNOSTICS_FILE, METRICS_FILE
from bnrepro.training.sharding import OneModel
from bnrepro.training.state import create_train_state

REPO = Path(__file__).resolve().parent.parent


# --- The configs -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("run", IMAGENET_RUNS)
def test_configs_are_valid_and_build_the_figure_5_network(run):
    config = imagenet_configs[run].get_config()
    config_schema.validate(config)
    model = create_model(config.model)
    variables = jax.eval_shape(
        lambda: model.init(jax.random.key(0), jnp.zeros((1, 224, 224, 3)), train=False)  # shapes only
    )
    logits = jax.eval_shape(lambda v: model.apply(v, jnp.zeros((2, 224, 224, 3)), train=False), variables)
    assert logits.shape == (2, 1000)
    assert bool(variables.get("batch_stats")) == (run != "inception")


def test_the_runs_differ_as_sec_4_2_1_says():
    inception, baseline, x5, x30, sigmoid = (imagenet_configs[run].get_config() for run in IMAGENET_RUNS)
    assert inception.learning_rate == pytest.approx(0.0015 * 8) and inception.batch_size == 32 * 8
    assert not inception.model.batch_norm and all(c.model.batch_norm for c in (baseline, x5, x30, sigmoid))
    # BN-Baseline: BN added, nothing else changed.
    assert {k: v for k, v in _flat(baseline).items() if _flat(inception)[k] != v} == {"model.batch_norm": True}
    for config, multiplier in ((x5, 5), (x30, 30), (sigmoid, 5)):
        assert config.learning_rate == pytest.approx(multiplier * baseline.learning_rate)
        assert config.model.dropout_rate == 0.0 and baseline.model.dropout_rate == 0.4
        assert config.weight_decay == pytest.approx(baseline.weight_decay / 5)
        assert config.lr_decay_steps == baseline.lr_decay_steps // 6
        assert not config.model.lrn and baseline.model.lrn
        assert (config.input.shuffle, baseline.input.shuffle) == ("within_shard", "shard_order")
        assert (config.input.distortion, baseline.input.distortion) == ("reduced", "full")
    assert sigmoid.model.activation == "sigmoid" and x5.model.activation == "relu"
    assert {k: v for k, v in _flat(sigmoid).items() if _flat(x5)[k] != v} == {"model.activation": "sigmoid"}


def test_the_argument_is_the_number_of_replicas_of_32_examples():
    config = imagenet_configs["bn_x5"].get_config("16")
    assert config.batch_size == 16 * 32 and config.model.bn.virtual_batch_size == 32
    assert config.learning_rate == pytest.approx(16 * 0.0015 * 5)
    assert config.num_steps == 31_000_000 // 16
    with pytest.raises(ValueError, match=r"configs/imagenet_bn_x30.py: bad argument 'x'"):
        imagenet_configs["bn_x30"].get_config("x")


def _flat(config: ml_collections.ConfigDict) -> dict:
    flat = {}
    for key, value in config.items():
        if isinstance(value, ml_collections.ConfigDict):
            flat.update({f"{key}.{k}": v for k, v in _flat(value).items()})
        else:
            flat[key] = value
    return flat


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"data_source": "offline"}, r"config\.data_source = 'offline': imagenet2012 is read through tfds only"),
        ({"plot_layer": "DenseBN_0"}, r"config\.plot_layer = 'DenseBN_0': only '' is supported"),
        ({"input.shuffle": "none"}, r"config\.input\.shuffle = 'none': expected one of"),
        ({"input.image_size": 8}, r"config\.input\.image_size = 8: must be >= 16"),
        ({"input.worker_count": -1}, r"config\.input\.worker_count = -1: must be >= 0"),
    ],
)
def test_bad_input_settings_name_the_key(override, message):
    config = imagenet_configs["bn_x5"].get_config()
    key, value = next(iter(override.items()))
    section, _, name = key.rpartition(".")
    (config[section] if section else config)[name] = value
    with pytest.raises(ValueError, match=message):
        config_schema.validate(config)


def test_a_missing_input_key_is_named():
    config = imagenet_configs["bn_x5"].get_config()
    config.unlock()
    del config.input.eval_split
    with pytest.raises(ValueError, match=r"config\.input\.eval_split: missing"):
        config_schema.validate(config)


def test_the_input_section_is_refused_for_an_on_device_dataset():
    from config_files import mnist_mlp

    config = mnist_mlp.get_config("bn")
    config.unlock()
    config.input = imagenet_configs["bn_x5"].get_config().input
    with pytest.raises(ValueError, match=r"config\.input: unknown key"):
        config_schema.validate(config)


# --- The host-fed loop on mock data -----------------------------------------------------------------------------


@pytest.fixture
def mock_imagenet():
    with tfds.testing.mock_data(num_examples=NUM_EXAMPLES):
        yield


def _records(workdir: Path) -> list[dict]:
    return [json.loads(line) for line in (workdir / METRICS_FILE).read_text().splitlines()]


def test_trains_and_evaluates_every_validation_example_once(mock_imagenet, tmp_path):
    state = train_and_evaluate(small_config(eval_statistics="moving_average"), tmp_path)
    assert int(state.step) == 8 and int(state.epoch) == 0  # a host-fed input's position is the step
    records = _records(tmp_path)
    assert [r["step"] for r in records] == [4, 8]
    assert all(np.isfinite(r["train_loss"]) for r in records)
    # The last evaluation recomputed in one batch of all 48 validation examples, from the pipeline's own crops.
    (batch,) = imagenet.eval_dataset(imagenet.open_split("validation"), batch_size=NUM_EXAMPLES, image_size=SIZE)
    assert batch["mask"].all()
    variables = {"params": state.params, "batch_stats": state.batch_stats}
    logits = state.apply_fn(variables, batch["image"], train=False)
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"]).mean()
    assert records[-1]["test_accuracy"] == pytest.approx(float(np.mean(logits.argmax(-1) == batch["label"])))
    assert records[-1]["test_loss"] == pytest.approx(float(loss), rel=1e-5)


def test_resumed_run_equals_an_uninterrupted_one(mock_imagenet, tmp_path):
    """Population statistics (the default) included: their mini-batches are drawn afresh from the step."""
    whole = train_and_evaluate(small_config(), tmp_path / "whole")
    train_and_evaluate(small_config(num_steps=4), tmp_path / "split")  # stops after the step-4 checkpoint
    resumed = train_and_evaluate(small_config(), tmp_path / "split")
    jax.tree.map(np.testing.assert_array_equal, whole.params, resumed.params)
    jax.tree.map(np.testing.assert_array_equal, whole.batch_stats, resumed.batch_stats)
    for a, b in zip(_records(tmp_path / "whole"), _records(tmp_path / "split"), strict=True):
        a.pop("steps_per_second"), b.pop("steps_per_second")
        assert a == b


def test_the_training_step_donates_the_state_it_is_given(mock_imagenet):
    """The device holds one copy of the state: `train` donates the state it is given. JAX frees a donated argument
    on CPU too, so reading a spent state raises here as it would on an accelerator (where it would otherwise read
    freed memory): the other tests would catch a use after donation. Every donated leaf is reused for an output, so
    no "donated buffers were not usable" warning comes with it. (A leaf the step never reads, such as the learning
    rate a schedule recomputes, is left out of the program by jit, so it is neither donated nor freed.)"""
    config = small_config()
    model = create_model(config.model)
    data = HostFedData(config, OneModel(config.num_devices, config.batch_size))
    state = create_train_state(config, model, jax.random.key(0), data.example_images())
    training = HostFedSteps(data, state)
    training.start(state)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*donated buffers")
        chunk = training.train(state, 2)
    data.close()
    assert all(leaf.is_deleted() for leaf in jax.tree.leaves((state.step, state.params, state.batch_stats)))
    assert int(chunk.state.step) == 2 and not any(leaf.is_deleted() for leaf in jax.tree.leaves(chunk.state))
    with pytest.raises(RuntimeError, match="Array has been deleted"):
        np.asarray(state.params["Dense_0"]["kernel"])


def test_diagnostics_are_measured_on_the_batch_each_step_read(mock_imagenet, tmp_path):
    layers = ("DenseBN_0", "DenseBN_1")
    config = small_config(diagnostics_every=4, diagnostics_layers=layers)
    state = train_and_evaluate(config, tmp_path)
    records = [json.loads(line) for line in (tmp_path / DIAGNOSTICS_FILE).read_text().splitlines()]
    assert [r["step"] for r in records] == [4, 8]
    # Step 8 trained on batch 7 of the stream; the record is `measure` on it and the state after step 8.
    batch = next(iter(imagenet.train_dataset(
        imagenet.open_split("train"), batch_size=8, seed=config.seed, image_size=SIZE, shuffle=config.input.shuffle,
        distortion=config.input.distortion, start_batch=7, process_index=0, process_count=1,
    )))  # fmt: skip
    # One compiled program (layer names and step scales fixed): op by op, vmap(jacfwd) and the SVDs cost ~25 s.
    measure = jax.jit(lambda s, b: diagnostics.measure(s, b, layers, config.diagnostics_step_scales))
    expected = measure(state, batch)
    for key in ("ics_l2/DenseBN_1", "grad_norm/DenseBN_0", "jacobian_sv_mean/DenseBN_1", "landscape/loss"):
        assert records[-1][key] == pytest.approx(float(expected[key]), rel=1e-4), key


@pytest.mark.skipif(jax.device_count() < 8, reason="needs 8 (simulated) devices")
def test_global_bn_on_8_devices_equals_one_device(mock_imagenet, tmp_path):
    common = {"num_steps": 3, "eval_every": 3, "batch_size": 16}
    one = train_and_evaluate(small_config(**common), tmp_path / "one")
    eight = train_and_evaluate(small_config(num_devices=8, **common), tmp_path / "eight")
    assert eight.params["Dense_0"]["kernel"].sharding.num_devices == 8
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-6), one.params, eight.params)
    assert _records(tmp_path / "one")[0]["test_accuracy"] == _records(tmp_path / "eight")[0]["test_accuracy"]
    per_device = small_config(num_devices=8, **common, **{"model.bn.virtual_batch_size": 2})
    per_device = train_and_evaluate(per_device, tmp_path / "per_device")
    assert not np.allclose(one.params["Dense_0"]["kernel"], per_device.params["Dense_0"]["kernel"], atol=1e-5)
    # BN over groups of 4 devices (2 x 4): as one device normalizing each half of the batch on its own.
    groups = small_config(num_devices=8, **common, **{"model.bn.device_group_size": 4})
    groups = train_and_evaluate(groups, tmp_path / "groups")
    halves = train_and_evaluate(small_config(**common, **{"model.bn.virtual_batch_size": 8}), tmp_path / "halves")
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-6), groups.params, halves.params)
    assert not np.allclose(groups.params["Dense_0"]["kernel"], one.params["Dense_0"]["kernel"], atol=1e-5)


def test_two_processes_train_as_one_with_the_whole_batch(tmp_path):
    """Two processes (`--coordinator_address/--num_processes/--process_id`), one CPU device each, each reading
    half of every mini-batch: the same parameters and metrics as one process reading it whole."""
    workers = _two_processes(tmp_path / "two")
    for worker in workers:
        output, _ = worker.communicate(timeout=300)
        assert worker.returncode == 0, output[-3000:]
    with tfds.testing.mock_data(num_examples=NUM_EXAMPLES):
        one = train_and_evaluate(small_config(**MULTIHOST_RUN), tmp_path / "one")
    checkpoints = ocp.CheckpointManager((tmp_path / "two" / CHECKPOINT_DIR).absolute())
    assert checkpoints.all_steps() == [1, 4]  # step 1: the clock, decided on process 0, read by process 1
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, one)  # onto this process's one device
    two = checkpoints.restore(4, args=ocp.args.StandardRestore(abstract))
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-6), one.params, two.params)
    for a, b in zip(_records(tmp_path / "one"), _records(tmp_path / "two"), strict=True):
        assert a["step"] == b["step"] and a["test_accuracy"] == b["test_accuracy"]
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-5)


def test_a_sigterm_to_one_process_stops_both_at_one_step_where_they_checkpoint(tmp_path):
    """SIGTERM to process 1 only, of two training as one (at a length they cannot reach), once they have
    checkpointed: both stop at the same step boundary, checkpoint there together and exit with 143, each saying so
    in one line (the loop asks every process whether any got a signal: `loop._stop_signal`)."""
    workdir = tmp_path / "two"
    workers = _two_processes(workdir, "--config.num_steps=1000000000")
    try:
        checkpoints = workdir / CHECKPOINT_DIR
        deadline = time.monotonic() + 300
        while not (checkpoints.is_dir() and any(p.name.isdigit() for p in checkpoints.iterdir())):
            assert all(w.poll() is None for w in workers) and time.monotonic() < deadline, "no checkpoint"
            time.sleep(0.05)
        workers[1].send_signal(signal.SIGTERM)
        outputs = [w.communicate(timeout=300)[0] for w in workers]
    finally:
        for worker in workers:
            worker.kill()
            worker.wait()
    steps = []
    for worker, output in zip(workers, outputs, strict=True):
        assert worker.returncode == 143 and "Traceback" not in output, output[-3000:]
        found = re.search(
            r"stopped by SIGTERM at step (\d+); checkpoint saved; rerun the same command to resume", output
        )
        assert found, output[-3000:]
        steps.append(int(found[1]))
    assert steps[0] == steps[1] and steps[0] in ocp.CheckpointManager(checkpoints.absolute()).all_steps(), steps


def _two_processes(workdir: Path, *overrides: str) -> list[subprocess.Popen]:
    """`tests/multihost_worker.py` as processes 0 and 1 of a two-process run into `workdir`, one CPU device each,
    with the `--config.KEY=VALUE` `overrides`; their stdout and stderr together."""
    port = _free_port()
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=1", "PYTHONPATH": str(REPO)}
    worker = [sys.executable, str(REPO / "tests" / "multihost_worker.py"), str(workdir)]
    flags = [f"--coordinator_address=localhost:{port}", "--num_processes=2", *overrides]
    return [
        subprocess.Popen(
            [*worker, *flags, f"--process_id={i}"],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for i in range(2)
    ]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def test_the_cli_runs_an_imagenet_config_from_anywhere_and_says_where_the_data_goes(tmp_path):
    """From another working directory the config still finds its base (`configs.imagenet_inception`); without
    the prepared dataset the run stops with the manual-download instructions, before writing anything."""
    result = subprocess.run(
        [sys.executable, "-m", "bnrepro.main", "--config", f"{REPO / 'configs' / 'imagenet_bn_x5.py'}:1",
         f"--workdir={tmp_path / 'run'}", f"--config.data_dir={tmp_path / 'tfds'}"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert result.returncode != 0
    assert "No module named 'configs'" not in result.stderr
    assert "Download ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar" in result.stderr, result.stderr[-2000:]
    assert not (tmp_path / "run").exists()
