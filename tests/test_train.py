"""The training loop: model, train step, on-device batching, evaluation, and the CLI end to end.

The CLI tests run `python -m bnrepro.main` on a fake, learnable MNIST written where the offline loader caches
the real one (`$BNREPRO_DATA_DIR/mnist.npz`), so nothing is downloaded.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest
from config_files import fashion_table2, mnist_mlp
from fake_mnist import learnable_images, write_fake_mnist
from tensorboard.backend.event_processing import event_accumulator

import bnrepro.data
from bnrepro import train

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def full_size_fake_mnist(tmp_path_factory) -> Path:
    """60,000 + 10,000 fake examples: what `load_dataset` accepts without patching (for subprocesses)."""
    return write_fake_mnist(tmp_path_factory.mktemp("mnist"), {"train": 50_000, "valid": 10_000, "test": 10_000})


def small_config(variant: str = "bn", **overrides):
    config = mnist_mlp.get_config(variant)
    config.update(
        {"num_steps": 60, "eval_every": 20, "checkpoint_every": 20, "steps_per_dispatch": 20, "population_batches": 5}
    )
    config.update(overrides)
    return config


def synthetic_dataset(n: int, seed: int = 0) -> train.Dataset:
    labels = np.random.default_rng(seed).integers(0, 10, n).astype(np.int32)
    return train.Dataset.create(learnable_images(labels, seed), labels)


def initial_state(variant: str, learning_rate: float = 0.5) -> tuple[train.TrainState, object]:
    config = mnist_mlp.get_config(variant)
    config.learning_rate = learning_rate
    model = train.create_model(config.model)
    return train.create_train_state(config, model, jax.random.key(0), jnp.zeros((60, 28, 28), jnp.uint8)), model


# --- Model and state ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", ["bn", "baseline"])
def test_model_shapes_and_bias_dropping(variant: str) -> None:
    state, _ = initial_state(variant)
    shapes = jax.tree.map(jnp.shape, state.params)
    widths = [(784, 100), (100, 100), (100, 100)]
    for i, kernel_shape in enumerate(widths):
        layer = shapes[f"DenseBN_{i}"]
        assert layer["Dense_0"]["kernel"] == kernel_shape
        if variant == "bn":  # z = g(BN(Wu)): no bias in W, BN's beta and gamma instead (Sec. 3.2)
            assert "bias" not in layer["Dense_0"]
            assert layer["BatchNorm_0"] == {"scale": (100,), "bias": (100,)}
        else:  # z = g(Wu + b)
            assert layer["Dense_0"]["bias"] == (100,) and "BatchNorm_0" not in layer
    assert shapes["Dense_0"] == {"kernel": (100, 10), "bias": (10,)}
    assert bool(state.batch_stats) == (variant == "bn")
    kernel = np.asarray(state.params["DenseBN_0"]["Dense_0"]["kernel"])
    assert abs(kernel.std() - 0.1) < 0.005  # N(0, init_std^2) with the config's init_std
    assert (int(state.step), int(state.epoch), int(state.batch_index)) == (0, 0, 0)


def _table2_net_cut_after_3a():
    config = fashion_table2.get_config("bn_x5")
    with config.unlocked():
        config.model.num_modules = 1  # the stem and module 3a: a few seconds to compile at -O3
    return config


@pytest.mark.parametrize(
    ("config", "images"),
    [
        (mnist_mlp.get_config("bn"), jnp.zeros((60, 28, 28), jnp.uint8)),
        (mnist_mlp.get_config("baseline"), jnp.zeros((60, 28, 28), jnp.uint8)),
        (_table2_net_cut_after_3a(), jnp.zeros((32, 28, 28), jnp.uint8)),
    ],
    ids=["mlp_bn", "mlp_baseline", "bn_inception"],
)
def test_initial_parameters_are_those_of_a_default_compiled_init(config, images) -> None:
    """create_train_state compiles `init` at -O1 (4x faster): the parameters must be those of XLA's default."""
    model = train.create_model(config.model)
    state = train.create_train_state(config, model, jax.random.key(0), images)
    init_rng = jax.random.split(jax.random.key(0))[0]
    default = jax.jit(lambda r, x: model.init(r, train.preprocess(x), train=False))(init_rng, images)
    jax.tree.map(np.testing.assert_array_equal, state.params, default["params"])
    jax.tree.map(np.testing.assert_array_equal, state.batch_stats, default.get("batch_stats", {}))


def test_dataset_take_returns_the_examples() -> None:
    images = np.random.default_rng(0).integers(0, 256, (50, 28, 28), dtype=np.uint8)
    labels = np.arange(50, dtype=np.int32) % 10
    dataset = train.Dataset.create(images, labels)
    assert dataset.rows.dtype == jnp.uint32  # 4 pixels per gathered element
    indices = jnp.asarray([7, 0, 49, 7])
    taken_images, taken_labels = jax.jit(train.Dataset.take)(dataset, indices)
    np.testing.assert_array_equal(taken_images, images[[7, 0, 49, 7]])
    np.testing.assert_array_equal(taken_labels, labels[[7, 0, 49, 7]])
    odd = train.Dataset.create(images[:, :27, :27], labels)  # rows of 27*27 bytes: kept as bytes
    assert odd.rows.dtype == jnp.uint8
    np.testing.assert_array_equal(odd.take(indices)[0], images[[7, 0, 49, 7], :27, :27])


def test_epoch_permutation_is_a_seeded_permutation_per_epoch() -> None:
    rng = jax.random.key_data(jax.random.key(3))
    first, again, second = (np.asarray(train.epoch_permutation(rng, e, 1000)) for e in (0, 0, 1))
    np.testing.assert_array_equal(np.sort(first), np.arange(1000))
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, second)


# --- Training ----------------------------------------------------------------------------------------------


def full_loss(state: train.TrainState, model, dataset: train.Dataset) -> float:
    """The inference network's loss on all of `dataset` (population statistics over all of it)."""
    images, labels = dataset.take(jnp.arange(len(dataset.labels)))
    images = train.preprocess(images)
    batch_stats = train.population_batch_stats(model, state, images.reshape((-1, 60) + images.shape[1:]))
    return float(train.evaluate(state, batch_stats, images, labels, plot_layer="")["loss"])


@pytest.mark.parametrize(("variant", "factor"), [("bn", 0.1), ("baseline", 0.95)])
def test_a_few_steps_lower_the_loss(variant: str, factor: float) -> None:
    dataset = synthetic_dataset(6000)
    state, model = initial_state(variant)
    before = full_loss(state, model, dataset)
    permutation = train.epoch_permutation(state.rng, 0, 6000)
    state, metrics = jax.jit(train.train_steps, static_argnames=("batch_size", "num_steps"))(
        state, dataset, permutation, batch_size=60, num_steps=100
    )
    assert np.asarray(metrics["loss"]).shape == (100,) and np.isfinite(metrics["loss"]).all()
    assert full_loss(state, model, dataset) < factor * before  # the sigmoid net without BN starts slowly (Fig. 1)
    assert (int(state.step), int(state.batch_index)) == (100, 100)


def test_fused_steps_are_train_step_on_consecutive_slices_of_the_permutation() -> None:
    dataset = synthetic_dataset(300)
    state, _ = initial_state("bn")
    permutation = train.epoch_permutation(state.rng, 0, 300)
    fused, _ = jax.jit(train.train_steps, static_argnames=("batch_size", "num_steps"))(
        state, dataset, permutation, batch_size=60, num_steps=3
    )
    manual = state
    for i in range(3):
        indices = permutation[i * 60 : (i + 1) * 60]
        images, labels = dataset.take(indices)
        batch = {"image": train.preprocess(images), "label": labels}
        manual, _ = jax.jit(train.train_step)(manual, batch)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), fused.params, manual.params)
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), fused.batch_stats, manual.batch_stats
    )


def test_splitting_a_dispatch_changes_nothing() -> None:
    dataset = synthetic_dataset(600)
    state, _ = initial_state("bn")
    permutation = train.epoch_permutation(state.rng, 0, 600)
    run = jax.jit(train.train_steps, static_argnames=("batch_size", "num_steps"))
    once, _ = run(state, dataset, permutation, batch_size=60, num_steps=6)
    twice, _ = run(state, dataset, permutation, batch_size=60, num_steps=3)
    twice, _ = run(twice, dataset, permutation, batch_size=60, num_steps=3)
    jax.tree.map(np.testing.assert_array_equal, once, twice)


# --- Evaluation --------------------------------------------------------------------------------------------


def test_evaluation_does_not_depend_on_the_batch_composition() -> None:
    dataset = synthetic_dataset(1200)
    state, model = initial_state("bn")
    permutation = train.epoch_permutation(state.rng, 0, 1200)
    state, _ = train.train_steps(state, dataset, permutation, batch_size=60, num_steps=10)
    batches = train.preprocess(dataset.take(permutation[:600])[0]).reshape(10, 60, 28, 28)
    batch_stats = train.population_batch_stats(model, state, batches)
    assert jax.tree.structure(batch_stats) == jax.tree.structure(state.batch_stats)

    images, labels = synthetic_dataset(200, seed=1).take(jnp.arange(200))
    images = train.preprocess(images)
    evaluate = jax.jit(train.evaluate, static_argnames="plot_layer")
    whole = evaluate(state, batch_stats, images, labels, plot_layer="DenseBN_2")["preactivation"]
    shuffled_order = np.random.default_rng(0).permutation(200)
    shuffled = evaluate(state, batch_stats, images[shuffled_order], labels[shuffled_order], plot_layer="DenseBN_2")
    alone = evaluate(state, batch_stats, images[:1], labels[:1], plot_layer="DenseBN_2")["preactivation"]
    np.testing.assert_allclose(shuffled["preactivation"], whole[shuffled_order], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(alone, whole[:1], rtol=1e-5, atol=1e-5)
    # In training mode the first example's output would depend on the other 199.
    logits_train, _ = model.apply(
        {"params": state.params, "batch_stats": batch_stats}, images, train=True, mutable=["batch_stats"]
    )
    logits_alone_batch, _ = model.apply(
        {"params": state.params, "batch_stats": batch_stats}, images[:2], train=True, mutable=["batch_stats"]
    )
    assert not np.allclose(logits_train[:2], logits_alone_batch, atol=1e-3)


def test_unit_percentiles_match_numpy() -> None:
    values = np.random.default_rng(0).normal(size=(1001, 7)).astype(np.float32)
    result = train.unit_percentiles(values, unit=3)
    expected = np.percentile(values.astype(np.float64), [15, 50, 85], axis=0)
    np.testing.assert_allclose([result["p15"], result["p50"], result["p85"]], expected[:, 3], rtol=1e-12)
    np.testing.assert_allclose(result["p50_units"], expected[1], rtol=1e-12)


# --- The loop, in this process -----------------------------------------------------------------------------


def test_train_and_evaluate_writes_metrics_and_resumes(small_fake_mnist: Path, tmp_path: Path) -> None:
    config = small_config(data_dir=str(small_fake_mnist))
    workdir = tmp_path / "run"
    state = train.train_and_evaluate(config, workdir)
    records = [json.loads(line) for line in (workdir / train.METRICS_FILE).read_text().splitlines()]
    assert [r["step"] for r in records] == [20, 40, 60]
    for key in ("test_accuracy", "train_loss", "test_loss", "p15", "p50", "p85"):
        assert all(isinstance(r[key], float) for r in records), key
    assert all(len(r["p50_units"]) == 100 for r in records)
    assert records[0]["p15"] <= records[0]["p50"] <= records[0]["p85"]
    assert records[-1]["p50"] == records[-1]["p50_units"][0]  # plot_unit = 0
    assert int(state.step) == 60 and int(state.epoch) == 2 and int(state.batch_index) == 20  # 20 steps per epoch

    config.num_steps = 80  # extending a finished run resumes it
    longer = train.train_and_evaluate(config, workdir)
    assert int(longer.step) == 80
    assert [json.loads(line)["step"] for line in (workdir / train.METRICS_FILE).read_text().splitlines()] == [
        20, 40, 60, 80,
    ]  # fmt: skip

    config.learning_rate *= 2
    with pytest.raises(ValueError, match=r"config\.learning_rate: .* holds a run with learning_rate="):
        train.train_and_evaluate(config, workdir)


def test_moving_average_statistics_option(small_fake_mnist: Path, tmp_path: Path) -> None:
    config = small_config(data_dir=str(small_fake_mnist), eval_statistics="moving_average", num_steps=20)
    train.train_and_evaluate(config, tmp_path / "run")
    record = json.loads((tmp_path / "run" / train.METRICS_FILE).read_text())
    assert 0.0 <= record["test_accuracy"] <= 1.0


def test_eval_examples_evaluates_the_first_test_examples(small_fake_mnist: Path, tmp_path: Path) -> None:
    config = small_config(
        data_dir=str(small_fake_mnist), eval_statistics="moving_average", num_steps=20, eval_examples=100
    )
    state = train.train_and_evaluate(config, tmp_path / "run")
    record = json.loads((tmp_path / "run" / train.METRICS_FILE).read_text())
    test = bnrepro.data.load_dataset("mnist", data_dir=small_fake_mnist).test
    images, labels = train.preprocess(jnp.asarray(test.images)), jnp.asarray(test.labels)
    first = train.evaluate(state, state.batch_stats, images[:100], labels[:100], plot_layer="")
    whole = train.evaluate(state, state.batch_stats, images, labels, plot_layer="")
    assert record["test_loss"] == pytest.approx(float(first["loss"]), rel=1e-5)
    assert record["test_accuracy"] == pytest.approx(float(first["accuracy"]))
    assert record["test_loss"] != pytest.approx(float(whole["loss"]), rel=1e-5)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"plot_layer": "DenseBN_7"}, r"config\.plot_layer = 'DenseBN_7'"),
        ({"plot_unit": 100}, r"config\.plot_unit = 100"),
        ({"population_batches": 21}, r"config\.population_batches = 21: more than the 20 mini-batches"),
        ({"eval_examples": 301}, r"config\.eval_examples = 301: more than the 300 test examples"),
        ({"batch_size": 1300}, r"config\.batch_size = 1300: more than the 1200 training examples"),
    ],
)
def test_config_errors_found_with_the_data_stop_before_training(
    small_fake_mnist: Path, tmp_path: Path, override: dict, message: str
) -> None:
    config = small_config(data_dir=str(small_fake_mnist), **override)
    with pytest.raises(ValueError, match=message):
        train.train_and_evaluate(config, tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_nan_loss_stops_with_diverged_at_step(small_fake_mnist: Path, tmp_path: Path, monkeypatch) -> None:
    real_train_step = train.train_step

    def train_step_with_nan_from_step_26(state, batch):
        state, metrics = real_train_step(state, batch)
        return state, {**metrics, "loss": jnp.where(state.step >= 26, jnp.nan, metrics["loss"])}

    monkeypatch.setattr(train, "train_step", train_step_with_nan_from_step_26)
    config = small_config(data_dir=str(small_fake_mnist), checkpoint_every=10, eval_every=10, steps_per_dispatch=10)
    workdir = tmp_path / "run"
    with pytest.raises(train.DivergedError, match=r"^diverged at step 26: the training loss is nan"):
        train.train_and_evaluate(config, workdir)
    assert (workdir / train.DIVERGED_FILE).read_text().startswith("diverged at step 26")
    assert ocp.CheckpointManager((workdir / train.CHECKPOINT_DIR).absolute()).latest_step() == 20
    assert [json.loads(line)["step"] for line in (workdir / train.METRICS_FILE).read_text().splitlines()] == [10, 20]


# --- The CLI -----------------------------------------------------------------------------------------------

CLI_OVERRIDES = (
    "--config.num_steps=4000",
    "--config.eval_every=500",
    "--config.checkpoint_every=1000",
    "--config.steps_per_dispatch=500",
    "--config.population_batches=10",
)


@pytest.fixture(scope="session")
def cli_env(tmp_path_factory) -> dict[str, str]:
    """The environment of the CLI runs: they share a persistent compilation cache (~2.5 s saved per run)."""
    return {
        **os.environ,
        "JAX_COMPILATION_CACHE_DIR": str(tmp_path_factory.mktemp("jax_cache")),
        "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
        "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0",
    }


def cli(workdir: Path, data_dir: Path) -> list[str]:
    return [sys.executable, "-m", "bnrepro.main", "--config=configs/mnist_mlp.py:bn", f"--workdir={workdir}"] + [
        *CLI_OVERRIDES,
        f"--config.data_dir={data_dir}",
    ]


def final_params(workdir: Path) -> dict:
    manager = ocp.CheckpointManager((workdir / train.CHECKPOINT_DIR).absolute())
    return manager.restore(manager.latest_step())["params"]


@pytest.fixture(scope="session")
def uninterrupted_run(full_size_fake_mnist: Path, tmp_path_factory, cli_env: dict[str, str]) -> Path:
    workdir = tmp_path_factory.mktemp("uninterrupted") / "run"
    subprocess.run(
        cli(workdir, full_size_fake_mnist), cwd=REPO, env=cli_env, check=True, capture_output=True, timeout=300
    )
    return workdir


def test_cli_writes_metrics_checkpoints_and_tensorboard_events(uninterrupted_run: Path) -> None:
    records = [json.loads(line) for line in (uninterrupted_run / train.METRICS_FILE).read_text().splitlines()]
    assert [r["step"] for r in records] == list(range(500, 4001, 500))
    assert records[-1]["test_accuracy"] > 0.9  # the fake data is learnable
    assert ocp.CheckpointManager((uninterrupted_run / train.CHECKPOINT_DIR).absolute()).latest_step() == 4000
    events = event_accumulator.EventAccumulator(str(uninterrupted_run))
    events.Reload()
    for tag in ("test_accuracy", "train_loss", "p15", "p50", "p85"):
        assert [e.step for e in events.Scalars(tag)] == [r["step"] for r in records], tag
    np.testing.assert_allclose(
        [e.value for e in events.Scalars("test_accuracy")], [r["test_accuracy"] for r in records], rtol=1e-6
    )


def test_cli_resumes_after_sigkill_with_identical_parameters(
    uninterrupted_run: Path, full_size_fake_mnist: Path, tmp_path: Path, cli_env: dict[str, str]
) -> None:
    workdir = tmp_path / "run"
    checkpoints = workdir / train.CHECKPOINT_DIR
    process = subprocess.Popen(
        cli(workdir, full_size_fake_mnist), cwd=REPO, env=cli_env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:  # kill -9 as soon as the first checkpoint is complete
        deadline = time.monotonic() + 120
        while not (checkpoints.exists() and any(p.name.isdigit() for p in checkpoints.iterdir())):
            assert process.poll() is None and time.monotonic() < deadline, "no checkpoint before the run ended"
            time.sleep(0.01)
        os.kill(process.pid, signal.SIGKILL)
    finally:
        process.wait()
    assert process.returncode == -signal.SIGKILL
    steps_at_kill = sorted(int(p.name) for p in checkpoints.iterdir() if p.name.isdigit())
    assert steps_at_kill[-1] < 4000, "the run finished before it was killed"

    resumed = subprocess.run(
        cli(workdir, full_size_fake_mnist),
        cwd=REPO,
        env=cli_env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "Resumed from the checkpoint at step" in resumed.stderr
    jax.tree.map(np.testing.assert_array_equal, final_params(workdir), final_params(uninterrupted_run))

    def evaluations(run: Path) -> list[dict]:
        records = [json.loads(line) for line in (run / train.METRICS_FILE).read_text().splitlines()]
        return [{k: v for k, v in r.items() if k != "steps_per_second"} for r in records]

    assert evaluations(workdir) == evaluations(uninterrupted_run)

    def scalars(run: Path) -> list[tuple[int, float]]:  # TensorBoard drops what the killed run wrote after 1000
        events = event_accumulator.EventAccumulator(str(run))
        events.Reload()
        return [(e.step, e.value) for e in events.Scalars("test_accuracy")]

    assert scalars(workdir) == scalars(uninterrupted_run)


# --- Models trained as a group (vmapped) -------------------------------------------------------------------


GROUP = ({"seed": 0, "learning_rate": 0.1}, {"seed": 1, "learning_rate": 0.1}, {"seed": 0, "learning_rate": 0.5})


def _records(workdir: Path) -> list[dict]:
    return [json.loads(line) for line in (workdir / train.METRICS_FILE).read_text().splitlines()]


def test_a_group_trains_each_model_as_it_would_alone(small_fake_mnist: Path, tmp_path: Path) -> None:
    configs = [small_config(data_dir=str(small_fake_mnist), **point) for point in GROUP]
    workdirs = [tmp_path / f"group_{i}" for i in range(len(GROUP))]
    together = train.train_group(configs, workdirs)
    for i, config in enumerate(configs):
        alone = train.train_and_evaluate(config, tmp_path / f"alone_{i}")
        for tree_alone, tree_together in (
            (alone.params, together[i].params),
            (alone.batch_stats, together[i].batch_stats),
        ):
            jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5), tree_alone, tree_together)
        for a, b in zip(_records(tmp_path / f"alone_{i}"), _records(workdirs[i]), strict=True):
            assert a["step"] == b["step"]
            assert a["test_accuracy"] == pytest.approx(b["test_accuracy"], abs=1 / 300 + 1e-9)  # one example
            assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-4)
            assert a["p50"] == pytest.approx(b["p50"], rel=1e-3, abs=1e-4)
    # The models differ: seeds give other initial weights and data orders, rates other trajectories.
    kernels = [np.asarray(s.params["DenseBN_0"]["Dense_0"]["kernel"]) for s in together]
    assert not np.allclose(kernels[0], kernels[1]) and not np.allclose(kernels[0], kernels[2])
    assert ocp.CheckpointManager((workdirs[1] / train.CHECKPOINT_DIR).absolute()).latest_step() == 60


def test_a_diverging_model_stops_alone(small_fake_mnist: Path, tmp_path: Path) -> None:
    points = [{"learning_rate": 0.1}, {"learning_rate": 1e5}]
    configs = [
        small_config("baseline", data_dir=str(small_fake_mnist), **p, model={"activation": "relu"}) for p in points
    ]
    results = train.train_group(configs, [tmp_path / "fine", tmp_path / "diverged"])
    assert isinstance(results[1], train.DivergedError) and (tmp_path / "diverged" / train.DIVERGED_FILE).exists()
    assert not (tmp_path / "diverged" / train.METRICS_FILE).exists()  # diverged before its first evaluation
    assert isinstance(results[0], train.TrainState) and int(results[0].step) == 60
    assert [r["step"] for r in _records(tmp_path / "fine")] == [20, 40, 60]


def test_a_resumed_group_equals_an_uninterrupted_one(small_fake_mnist: Path, tmp_path: Path) -> None:
    configs = [small_config(data_dir=str(small_fake_mnist), **point) for point in GROUP[:2]]
    whole = train.train_group(configs, [tmp_path / "whole_0", tmp_path / "whole_1"])
    halves = [c.copy_and_resolve_references() for c in configs]
    for config in halves:
        config.num_steps = 40
    train.train_group(halves, [tmp_path / "split_0", tmp_path / "split_1"])
    resumed = train.train_group(configs, [tmp_path / "split_0", tmp_path / "split_1"])
    for a, b in zip(whole, resumed, strict=True):
        jax.tree.map(np.testing.assert_array_equal, a.params, b.params)
    train.train_and_evaluate(halves[0], tmp_path / "forty")
    with pytest.raises(ValueError, match=r"checkpoints are at different steps \[40, 60\]"):
        train.train_group(configs, [tmp_path / "forty", tmp_path / "whole_1"])


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"batch_size": 30}, r"config\.batch_size: models trained as a group may differ only in \['seed', "),
        ({"model": {"activation": "relu"}}, r"config\.model\.activation: models trained as a group"),
        ({"learning_rate": 0.2, "lr_decay_rate": 0.5}, r"config\.lr_decay_rate: models trained as a group"),
    ],
)
def test_configs_that_cannot_share_a_program_are_refused(tmp_path: Path, change: dict, message: str) -> None:
    first = small_config()
    second = small_config()
    second.update(change)
    with pytest.raises(ValueError, match=message):
        train.train_group([first, second], [tmp_path / "a", tmp_path / "b"])


def test_a_decaying_learning_rate_must_be_shared(tmp_path: Path) -> None:
    first, second = small_config(lr_decay_rate=0.5, lr_decay_steps=10), small_config(lr_decay_rate=0.5)
    second.update(learning_rate=0.2, lr_decay_steps=10)
    with pytest.raises(ValueError, match=r"config\.learning_rate: a group with a learning-rate decay must share"):
        train.check_group([first, second])


@pytest.mark.skipif(jax.device_count() < 8, reason="needs 8 (simulated) devices")
def test_a_group_split_across_devices_trains_as_on_one(
    small_fake_mnist: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    points = [{"seed": seed, "learning_rate": lr} for seed in (0, 1, 2, 3) for lr in (0.1, 0.5)]
    shardings, train_chunk = [], train.OnDeviceInput.train

    def recording_shardings(self, state, max_steps):  # of the stacked kernels, before and after each program
        chunk = train_chunk(self, state, max_steps)
        shardings.extend(s.params["DenseBN_0"]["Dense_0"]["kernel"].sharding for s in (state, chunk.state))
        return chunk

    monkeypatch.setattr(train.OnDeviceInput, "train", recording_shardings)
    results = {}
    for devices in (1, 8):
        configs = [small_config(data_dir=str(small_fake_mnist), num_devices=devices, **p) for p in points]
        results[devices] = train.train_group(configs, [tmp_path / f"{devices}_{i}" for i in range(len(points))])
    # The 8-device run kept the 8 models' stacked states split across the devices, one model each.
    split = [sh for sh in shardings if sh.num_devices == 8]
    assert len(split) == len(shardings) // 2 and all(sh.spec == jax.sharding.PartitionSpec("models") for sh in split)
    for one, eight in zip(results[1], results[8], strict=True):
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), one.params, eight.params)
    with pytest.raises(ValueError, match=r"a group of 3 models: does not split evenly across 8 devices"):
        configs = [small_config(data_dir=str(small_fake_mnist), num_devices=8, seed=s) for s in range(3)]
        train.train_group(configs, [tmp_path / f"odd_{i}" for i in range(3)])
