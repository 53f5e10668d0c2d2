"""The training loop: model, train step, on-device batching, evaluation, and the CLI end to end.

The CLI tests run `python -m bnrepro.main` on a fake, learnable MNIST written where the offline loader caches
the real one (`$BNREPRO_DATA_DIR/mnist.npz`), so nothing is downloaded.
"""

import functools
import json
import os
import re
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
from config_files import fashion_table2, load_config_file, mnist_mlp
from fake_mnist import learnable_images, write_fake_mnist
from tensorboard.backend.event_processing import event_accumulator
from terminal import with_ctrl_c
from training_run import small_config, train_and_evaluate

import bnrepro.data
from bnrepro import config_schema
from bnrepro.hooks import Figure1Percentiles, unit_percentiles
from bnrepro.models import create_model
from bnrepro.training import evaluation, run_dir, steps
from bnrepro.training.device_data import Dataset, epoch_permutation, padded_batches
from bnrepro.training.loop import DivergedError
from bnrepro.training.run_dir import CHECKPOINT_DIR, CONFIG_FILE, DIVERGED_FILE, METRICS_FILE, WEIGHT_NORMS_FILE
from bnrepro.training.sharding import OneModel
from bnrepro.training.state import TrainState, create_train_state, preprocess, run_once_compiler_options
from bnrepro.training.steps import eval_step, loss_and_accuracy, train_step, train_steps

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def full_size_fake_mnist(tmp_path_factory) -> Path:
    """60,000 + 10,000 fake examples: what `load_dataset` accepts without patching (for subprocesses)."""
    return write_fake_mnist(tmp_path_factory.mktemp("mnist"), {"train": 50_000, "valid": 10_000, "test": 10_000})


def synthetic_dataset(n: int, seed: int = 0) -> Dataset:
    labels = np.random.default_rng(seed).integers(0, 10, n).astype(np.int32)
    return Dataset.create(learnable_images(labels, seed), labels)


def initial_state(variant: str, learning_rate: float = 0.5) -> tuple[TrainState, object]:
    config = mnist_mlp.get_config(variant)
    config.learning_rate = learning_rate
    model = create_model(config.model)
    return create_train_state(config, model, jax.random.key(0), jnp.zeros((60, 28, 28), jnp.uint8)), model


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
    """create_train_state compiles `init` with run_once_compiler_options() (3x faster): the parameters must be those
    of XLA's default."""
    model = create_model(config.model)
    state = create_train_state(config, model, jax.random.key(0), images)
    init_rng = jax.random.split(jax.random.key(0))[0]
    default = jax.jit(lambda r, x: model.init(r, preprocess(x), train=False))(init_rng, images)
    jax.tree.map(np.testing.assert_array_equal, state.params, default["params"])
    jax.tree.map(np.testing.assert_array_equal, state.batch_stats, default.get("batch_stats", {}))


def test_the_shuffle_compiled_for_start_up_is_the_default_compiled_one() -> None:
    """OnDeviceSteps compiles `epoch_permutation` with run_once_compiler_options(): the order must be XLA's
    default's."""
    permute = functools.partial(epoch_permutation, num_examples=60_000)
    rng = jax.random.key_data(jax.random.key(5))
    for epoch in (0, 7):
        np.testing.assert_array_equal(
            jax.jit(permute, compiler_options=run_once_compiler_options())(rng, epoch), jax.jit(permute)(rng, epoch)
        )


def test_dataset_take_returns_the_examples() -> None:
    images = np.random.default_rng(0).integers(0, 256, (50, 28, 28), dtype=np.uint8)
    labels = np.arange(50, dtype=np.int32) % 10
    dataset = Dataset.create(images, labels)
    assert dataset.rows.dtype == jnp.uint32  # 4 pixels per gathered element
    indices = jnp.asarray([7, 0, 49, 7])
    taken_images, taken_labels = jax.jit(Dataset.take)(dataset, indices)
    np.testing.assert_array_equal(taken_images, images[[7, 0, 49, 7]])
    np.testing.assert_array_equal(taken_labels, labels[[7, 0, 49, 7]])
    odd = Dataset.create(images[:, :27, :27], labels)  # rows of 27*27 bytes: kept as bytes
    assert odd.rows.dtype == jnp.uint8
    np.testing.assert_array_equal(odd.take(indices)[0], images[[7, 0, 49, 7], :27, :27])


def test_epoch_permutation_is_a_seeded_permutation_per_epoch() -> None:
    rng = jax.random.key_data(jax.random.key(3))
    first, again, second = (np.asarray(epoch_permutation(rng, e, 1000)) for e in (0, 0, 1))
    np.testing.assert_array_equal(np.sort(first), np.arange(1000))
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, second)


# --- Training ----------------------------------------------------------------------------------------------


def population_batch_stats(model, state: TrainState, batches: jax.Array):
    """Algorithm 2's statistics over the mini-batches `batches` (K, m, ...) (`evaluation.population_statistics`)."""
    moments = jax.jit(functools.partial(steps.batch_moments, model))
    return evaluation.population_statistics(moments, jax.jit(steps.population), state, ({"image": b} for b in batches))


def full_loss(state: TrainState, model, dataset: Dataset) -> float:
    """The inference network's loss on all of `dataset` (population statistics over all of it)."""
    images, labels = jax.jit(Dataset.take)(dataset, jnp.arange(len(dataset.labels)))
    images = jax.jit(preprocess)(images)
    batch_stats = population_batch_stats(model, state, images.reshape((-1, 60) + images.shape[1:]))
    return evaluate(state, batch_stats, images, labels)["loss"]


def evaluate(state: TrainState, batch_stats, images: jax.Array, labels: jax.Array) -> dict[str, float]:
    """The inference network's mean loss and accuracy on `images` (one compiled `eval_step`)."""
    return loss_and_accuracy(jax.jit(eval_step)(state, batch_stats, {"image": images, "label": labels})[0])


@pytest.mark.parametrize(("variant", "factor"), [("bn", 0.1), ("baseline", 0.95)])
def test_a_few_steps_lower_the_loss(variant: str, factor: float) -> None:
    dataset = synthetic_dataset(6000)
    state, model = initial_state(variant)
    before = full_loss(state, model, dataset)
    permutation = epoch_permutation(state.rng, 0, 6000)
    state, metrics = jax.jit(train_steps, static_argnames=("batch_size", "num_steps"))(
        state, dataset, permutation, batch_size=60, num_steps=100
    )
    assert np.asarray(metrics["loss"]).shape == (100,) and np.isfinite(metrics["loss"]).all()
    assert full_loss(state, model, dataset) < factor * before  # the sigmoid net without BN starts slowly (Fig. 1)
    assert (int(state.step), int(state.batch_index)) == (100, 100)


def test_fused_steps_are_train_step_on_consecutive_slices_of_the_permutation() -> None:
    dataset = synthetic_dataset(300)
    state, _ = initial_state("bn")
    permutation = epoch_permutation(state.rng, 0, 300)
    fused, _ = jax.jit(train_steps, static_argnames=("batch_size", "num_steps"))(
        state, dataset, permutation, batch_size=60, num_steps=3
    )
    manual = state
    for i in range(3):
        indices = permutation[i * 60 : (i + 1) * 60]
        images, labels = dataset.take(indices)
        batch = {"image": preprocess(images), "label": labels}
        manual, _ = jax.jit(train_step)(manual, batch)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), fused.params, manual.params)
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), fused.batch_stats, manual.batch_stats
    )


def test_splitting_a_dispatch_changes_nothing() -> None:
    dataset = synthetic_dataset(600)
    state, _ = initial_state("bn")
    permutation = epoch_permutation(state.rng, 0, 600)
    run = jax.jit(train_steps, static_argnames=("batch_size", "num_steps"))
    once, _ = run(state, dataset, permutation, batch_size=60, num_steps=6)
    twice, _ = run(state, dataset, permutation, batch_size=60, num_steps=3)
    twice, _ = run(twice, dataset, permutation, batch_size=60, num_steps=3)
    jax.tree.map(np.testing.assert_array_equal, once, twice)


# --- Evaluation --------------------------------------------------------------------------------------------


def test_evaluation_does_not_depend_on_the_batch_composition() -> None:
    dataset = synthetic_dataset(1200)
    state, model = initial_state("bn")
    permutation = epoch_permutation(state.rng, 0, 1200)
    run = jax.jit(train_steps, static_argnames=("batch_size", "num_steps"))  # one program, not op by op
    state, _ = run(state, dataset, permutation, batch_size=60, num_steps=10)
    batches = preprocess(dataset.take(permutation[:600])[0]).reshape(10, 60, 28, 28)
    batch_stats = population_batch_stats(model, state, batches)
    assert jax.tree.structure(batch_stats) == jax.tree.structure(state.batch_stats)

    images, labels = synthetic_dataset(200, seed=1).take(jnp.arange(200))
    images = preprocess(images)
    collect = Figure1Percentiles("DenseBN_2", 0).collect
    preactivations = jax.jit(
        lambda images, labels: eval_step(state, batch_stats, {"image": images, "label": labels}, collect)[1]
    )
    whole = preactivations(images, labels)["preactivation"]
    shuffled_order = np.random.default_rng(0).permutation(200)
    shuffled = preactivations(images[shuffled_order], labels[shuffled_order])["preactivation"]
    alone = preactivations(images[:1], labels[:1])["preactivation"]
    np.testing.assert_allclose(shuffled, whole[shuffled_order], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(alone, whole[:1], rtol=1e-5, atol=1e-5)
    # In training mode the first example's output would depend on the other 199.
    variables = {"params": state.params, "batch_stats": batch_stats}
    apply_train = jax.jit(lambda x: model.apply(variables, x, train=True, mutable=["batch_stats"])[0])
    logits_train, logits_alone_batch = apply_train(images), apply_train(images[:2])
    assert not np.allclose(logits_train[:2], logits_alone_batch, atol=1e-3)


def test_the_test_set_evaluated_batch_by_batch_is_one_batch_of_it_all() -> None:
    """`evaluation.evaluate` over `padded_batches` of 1000 (the first 2,345 examples, the last padded and masked)
    gives the sums and the per-example values of one `eval_step` over all of them, also for 3 rows per example (a
    conv layer's locations)."""
    state, _ = initial_state("bn")
    images, labels = synthetic_dataset(2345, seed=2).take(jnp.arange(2345))
    test = {"image": preprocess(images), "label": labels}
    figure1 = Figure1Percentiles("DenseBN_2", 0).collect

    def collect(intermediates):
        rows = figure1(intermediates)["preactivation"]
        return {
            "preactivation": rows,
            "locations": jnp.repeat(rows, 3, axis=0) * jnp.tile(jnp.arange(3.0), len(rows))[:, None],
        }

    whole_sums, whole = jax.jit(lambda t: eval_step(state, state.batch_stats, t, collect))(test)
    batches = padded_batches(np.asarray(test["image"]), np.asarray(labels), 1000)
    assert [len(b["label"]) for b in batches] == [1000] * 3 and [int(b["mask"].sum()) for b in batches][-1] == 345
    step = jax.jit(functools.partial(eval_step, collect=collect))
    ((sums, taken),) = evaluation.evaluate(step, state, state.batch_stats, batches, OneModel(1, 60))
    assert float(sums["count"]) == 2345 and float(sums["correct"]) == float(whole_sums["correct"])
    np.testing.assert_allclose(sums["loss"], whole_sums["loss"], rtol=1e-5)
    assert taken["preactivation"].shape == (2345, 100) and taken["locations"].shape == (3 * 2345, 100)
    for key in ("preactivation", "locations"):
        np.testing.assert_allclose(taken[key], whole[key], rtol=1e-5, atol=1e-6)
    masked = [{**batch, "mask": batch["mask"] & (np.arange(1000) % 2 == 0)} for batch in batches]
    (result,) = evaluation.evaluate(jax.jit(eval_step), state, state.batch_stats, masked, OneModel(1, 60))
    assert float(result.sums["count"]) == 1173


def test_unit_percentiles_of_a_known_distribution() -> None:
    """Fig. 1(b, c)'s percentiles of the plotted unit: of 0..100 (in any order) the kth percentile is k."""
    rng = np.random.default_rng(0)
    values = np.stack([rng.permutation(101) * scale for scale in (1.0, 2.0, -1.0)], axis=1).astype(np.float32)
    result = unit_percentiles(values, unit=1)
    assert (result["p15"], result["p50"], result["p85"]) == (30.0, 100.0, 170.0)
    assert result["p50_units"] == [50.0, 100.0, -50.0]
    even = np.random.default_rng(1).normal(size=(1000, 5)).astype(np.float32)  # the median between two rows
    np.testing.assert_allclose(unit_percentiles(even, 0)["p50_units"], np.median(even.astype(np.float64), axis=0))
    with pytest.raises(ValueError, match=r"config\.plot_unit = 3: the plotted layer has 3 units"):
        unit_percentiles(values, unit=3)


# --- The loop, in this process -----------------------------------------------------------------------------


def test_train_and_evaluate_writes_metrics_and_resumes(small_fake_mnist: Path, tmp_path: Path) -> None:
    config = small_config(data_dir=str(small_fake_mnist))
    workdir = tmp_path / "run"
    state = train_and_evaluate(config, workdir)
    records = [json.loads(line) for line in (workdir / METRICS_FILE).read_text().splitlines()]
    assert [r["step"] for r in records] == [20, 40, 60]
    for key in ("test_accuracy", "train_loss", "test_loss", "p15", "p50", "p85"):
        assert all(isinstance(r[key], float) for r in records), key
    assert all(len(r["p50_units"]) == 100 for r in records)
    assert records[0]["p15"] <= records[0]["p50"] <= records[0]["p85"]
    assert records[-1]["p50"] == records[-1]["p50_units"][0]  # plot_unit = 0
    assert int(state.step) == 60 and int(state.epoch) == 2 and int(state.batch_index) == 20  # 20 steps per epoch

    config.num_steps = 80  # extending a finished run resumes it
    longer = train_and_evaluate(config, workdir)
    assert int(longer.step) == 80
    assert [json.loads(line)["step"] for line in (workdir / METRICS_FILE).read_text().splitlines()] == [
        20, 40, 60, 80,
    ]  # fmt: skip

    config.learning_rate *= 2
    with pytest.raises(ValueError, match=r"config\.learning_rate: .* holds a run with learning_rate="):
        train_and_evaluate(config, workdir)


def test_a_run_made_before_model_bn_resumes(small_fake_mnist: Path, tmp_path: Path) -> None:
    """A run directory of the version before `config.model.bn` (flat `model.bn_*` keys, eps implicit) resumes
    under today's config to the parameters of an uninterrupted run; a key no version knows stops it."""
    config = small_config(data_dir=str(small_fake_mnist))
    whole = train_and_evaluate(config, tmp_path / "whole")
    half = config.copy_and_resolve_references()
    half.num_steps = 40
    train_and_evaluate(half, tmp_path / "old")
    saved = json.loads((tmp_path / "old" / CONFIG_FILE).read_text())
    bn = saved["model"].pop("bn")  # as configs/mnist_mlp.py wrote it then: five bn_* keys, the rest implicit
    del saved["model"]["dropout_rate"], saved["eval_train_examples"], saved["weight_norms_every"]  # later keys
    saved["model"].update({f"bn_{k}": bn[k] for k in ("momentum", "backward", "renorm", "noise_shift", "noise_scale")})
    (tmp_path / "old" / CONFIG_FILE).write_text(json.dumps(saved))
    resumed = train_and_evaluate(config, tmp_path / "old")
    jax.tree.map(np.testing.assert_array_equal, resumed.params, whole.params)
    assert "bn_momentum" not in (tmp_path / "old" / CONFIG_FILE).read_text()  # rewritten in today's layout

    saved["model"]["bn_tracking"] = True
    (tmp_path / "old" / CONFIG_FILE).write_text(json.dumps(saved))
    with pytest.raises(ValueError, match=r"config\.model\.bn_tracking: .* keys this version of bnrepro does not know"):
        train_and_evaluate(config, tmp_path / "old")


def test_keys_added_since_a_run_are_implicit_only_where_todays_config_has_them() -> None:
    """A recorded config without `model.dropout_rate` matches today's MLP config at 0.0, and a BN-LSTM's config
    (its model has no dropout_rate) as it is."""
    for config in (mnist_mlp.get_config("bn"), load_config_file("seq_mnist").get_config("bn_lstm,rows")):
        saved = json.loads(config.to_json_best_effort())
        saved["model"].pop("dropout_rate", None)
        assert run_dir.config_changes(saved, config, implicit=config_schema.IMPLICIT_IN_OLD_RUNS) == {}
    config.model.h0_noise = 0.5  # a change is still one
    assert run_dir.config_changes(saved, config, implicit=config_schema.IMPLICIT_IN_OLD_RUNS) == {
        "model.h0_noise": (saved["model"]["h0_noise"], 0.5)
    }


def test_dropout_run_resumes_exactly_and_records_train_accuracy_and_weight_norms(
    small_fake_mnist: Path, tmp_path: Path
) -> None:
    """With dropout, a run stopped at step 40 and resumed ends with the parameters of an uninterrupted one (the
    dropout keys derive from the checkpointed state); `eval_train_examples` records the inference network on the
    first training examples; `weight_norms_every` records each layer's ||W|| (NumPy's norm of the final kernels)."""
    config = small_config(
        data_dir=str(small_fake_mnist), eval_statistics="moving_average", eval_train_examples=250,
        weight_norms_every=30,
    )  # fmt: skip
    config.model.dropout_rate = 0.5
    whole = train_and_evaluate(config, tmp_path / "whole")
    half = config.copy_and_resolve_references()
    half.num_steps = 40
    train_and_evaluate(half, tmp_path / "resumed")
    resumed = train_and_evaluate(config, tmp_path / "resumed")
    jax.tree.map(np.testing.assert_array_equal, resumed.params, whole.params)
    no_dropout = small_config(data_dir=str(small_fake_mnist), eval_statistics="moving_average", num_steps=20)
    train_and_evaluate(no_dropout, tmp_path / "plain")

    train = bnrepro.data.load_dataset("mnist", data_dir=small_fake_mnist).train
    first = evaluate(whole, whole.batch_stats, preprocess(jnp.asarray(train.images[:250])), train.labels[:250])
    record = json.loads((tmp_path / "whole" / METRICS_FILE).read_text().splitlines()[-1])
    assert record["train_accuracy"] == pytest.approx(first["accuracy"])
    assert record["train_eval_loss"] == pytest.approx(first["loss"], rel=1e-5)
    norms = [json.loads(line) for line in (tmp_path / "whole" / WEIGHT_NORMS_FILE).read_text().splitlines()]
    assert [r["step"] for r in norms] == [30, 60]
    kernels = {"DenseBN_0/Dense_0", "DenseBN_1/Dense_0", "DenseBN_2/Dense_0", "Dense_0"}
    assert set(norms[-1]) == {"step", *kernels}
    for layer in kernels:
        kernel = np.asarray(functools.reduce(lambda tree, key: tree[key], layer.split("/"), whole.params)["kernel"])
        assert norms[-1][layer] == pytest.approx(np.sqrt(np.sum(kernel.astype(np.float64) ** 2)), rel=1e-5)
    assert "train_accuracy" not in json.loads((tmp_path / "plain" / METRICS_FILE).read_text().splitlines()[-1])
    assert not (tmp_path / "plain" / WEIGHT_NORMS_FILE).exists()


def test_moving_average_statistics_option(small_fake_mnist: Path, tmp_path: Path) -> None:
    """`eval_statistics="moving_average"` evaluates with BN's moving averages, not Algorithm 2's population."""
    config = small_config(data_dir=str(small_fake_mnist), eval_statistics="moving_average", num_steps=20)
    state = train_and_evaluate(config, tmp_path / "run")
    record = json.loads((tmp_path / "run" / METRICS_FILE).read_text())
    splits = bnrepro.data.load_dataset("mnist", data_dir=small_fake_mnist)
    images, labels = preprocess(jnp.asarray(splits.test.images)), jnp.asarray(splits.test.labels)
    moving = evaluate(state, state.batch_stats, images, labels)
    train_images = preprocess(jnp.asarray(splits.train.images[:300])).reshape(5, 60, 28, 28)
    population = evaluate(
        state, population_batch_stats(create_model(config.model), state, train_images), images, labels
    )
    assert record["test_loss"] == pytest.approx(moving["loss"], rel=1e-5)
    assert record["test_accuracy"] == pytest.approx(moving["accuracy"])
    assert abs(population["loss"] - moving["loss"]) > 1e-3  # 20 steps: the averages are far from the population


def test_eval_examples_evaluates_the_first_test_examples(small_fake_mnist: Path, tmp_path: Path) -> None:
    config = small_config(
        data_dir=str(small_fake_mnist), eval_statistics="moving_average", num_steps=20, eval_examples=100
    )
    state = train_and_evaluate(config, tmp_path / "run")
    record = json.loads((tmp_path / "run" / METRICS_FILE).read_text())
    test = bnrepro.data.load_dataset("mnist", data_dir=small_fake_mnist).test
    images, labels = preprocess(jnp.asarray(test.images)), jnp.asarray(test.labels)
    first = evaluate(state, state.batch_stats, images[:100], labels[:100])
    whole = evaluate(state, state.batch_stats, images, labels)
    assert record["test_loss"] == pytest.approx(first["loss"], rel=1e-5)
    assert record["test_accuracy"] == pytest.approx(first["accuracy"])
    assert record["test_loss"] != pytest.approx(whole["loss"], rel=1e-5)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"plot_layer": "DenseBN_7"}, r"config\.plot_layer = 'DenseBN_7'"),
        ({"plot_unit": 100}, r"config\.plot_unit = 100"),
        ({"population_batches": 21}, r"config\.population_batches = 21: more than the 20 mini-batches"),
        ({"eval_examples": 301}, r"config\.eval_examples = 301: more than the 300 test examples"),
        (  # the held-out examples are not training examples
            {"eval_train_examples": 1001, "validation_size": 200},
            r"config\.eval_train_examples = 1001: more than the 1000 training examples",
        ),
        ({"batch_size": 1300}, r"config\.batch_size = 1300: more than the 1200 training examples"),
    ],
)
def test_config_errors_found_with_the_data_stop_before_training(
    small_fake_mnist: Path, tmp_path: Path, override: dict, message: str
) -> None:
    config = small_config(data_dir=str(small_fake_mnist), **override)
    with pytest.raises(ValueError, match=message):
        train_and_evaluate(config, tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_nan_loss_stops_with_diverged_at_step(small_fake_mnist: Path, tmp_path: Path, monkeypatch) -> None:
    real_train_step = train_step

    def train_step_with_nan_from_step_26(state, batch):
        state, metrics = real_train_step(state, batch)
        return state, {**metrics, "loss": jnp.where(state.step >= 26, jnp.nan, metrics["loss"])}

    monkeypatch.setattr(steps, "train_step", train_step_with_nan_from_step_26)
    config = small_config(data_dir=str(small_fake_mnist), checkpoint_every=10, eval_every=10, steps_per_dispatch=10)
    workdir = tmp_path / "run"
    with pytest.raises(DivergedError, match=r"^diverged at step 26: the training loss is nan"):
        train_and_evaluate(config, workdir)
    assert (workdir / DIVERGED_FILE).read_text().startswith("diverged at step 26")
    assert ocp.CheckpointManager((workdir / CHECKPOINT_DIR).absolute()).latest_step() == 20
    assert [json.loads(line)["step"] for line in (workdir / METRICS_FILE).read_text().splitlines()] == [10, 20]


# --- The CLI -----------------------------------------------------------------------------------------------

CLI_STEPS = 4000  # the uninterrupted run's length
CLI_OVERRIDES = (
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


def cli(workdir: Path, data_dir: Path, num_steps: int = CLI_STEPS) -> list[str]:
    return [sys.executable, "-m", "bnrepro.main", "--config=configs/mnist_mlp.py:bn", f"--workdir={workdir}"] + [
        f"--config.num_steps={num_steps}",
        *CLI_OVERRIDES,
        f"--config.data_dir={data_dir}",
    ]


def final_params(workdir: Path) -> dict:
    manager = ocp.CheckpointManager((workdir / CHECKPOINT_DIR).absolute())
    return manager.restore(manager.latest_step())["params"]


@pytest.fixture(scope="session")
def uninterrupted_run(full_size_fake_mnist: Path, tmp_path_factory, cli_env: dict[str, str]) -> Path:
    workdir = tmp_path_factory.mktemp("uninterrupted") / "run"
    subprocess.run(
        cli(workdir, full_size_fake_mnist), cwd=REPO, env=cli_env, check=True, capture_output=True, timeout=300
    )
    return workdir


def test_cli_writes_metrics_checkpoints_and_tensorboard_events(uninterrupted_run: Path) -> None:
    records = [json.loads(line) for line in (uninterrupted_run / METRICS_FILE).read_text().splitlines()]
    assert [r["step"] for r in records] == list(range(500, CLI_STEPS + 1, 500))
    assert records[-1]["test_accuracy"] > 0.9  # the fake data is learnable
    assert ocp.CheckpointManager((uninterrupted_run / CHECKPOINT_DIR).absolute()).latest_step() == CLI_STEPS
    events = event_accumulator.EventAccumulator(str(uninterrupted_run))
    events.Reload()
    for tag in ("test_accuracy", "train_loss", "p15", "p50", "p85"):
        assert [e.step for e in events.Scalars(tag)] == [r["step"] for r in records], tag
    np.testing.assert_allclose(
        [e.value for e in events.Scalars("test_accuracy")], [r["test_accuracy"] for r in records], rtol=1e-6
    )


def resume_as_uninterrupted(
    workdir: Path, stopped_at: int, uninterrupted_run: Path, data_dir: Path, env: dict[str, str]
) -> Path:
    """Resumes the run stopped at step `stopped_at` in `workdir` to the uninterrupted run's length (or, stopped past
    it, to a longer one, trained uninterrupted beside it) and checks that it ends with the uninterrupted run's
    parameters and evaluation records; returns that run's workdir."""
    num_steps, reference = CLI_STEPS, uninterrupted_run
    if stopped_at >= CLI_STEPS:  # stopped past the uninterrupted run's end: a longer one to compare with
        num_steps, reference = stopped_at + 1000, workdir.parent / "reference"
        subprocess.run(
            cli(reference, data_dir, num_steps), cwd=REPO, env=env, check=True, capture_output=True, timeout=300
        )
    resumed = subprocess.run(
        cli(workdir, data_dir, num_steps), cwd=REPO, env=env, capture_output=True, text=True, timeout=300, check=False
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"Resumed from the checkpoint at step {stopped_at}" in resumed.stderr
    jax.tree.map(np.testing.assert_array_equal, final_params(workdir), final_params(reference))

    def evaluations(run: Path) -> list[dict]:
        records = [json.loads(line) for line in (run / METRICS_FILE).read_text().splitlines()]
        return [{k: v for k, v in r.items() if k != "steps_per_second"} for r in records]

    assert evaluations(workdir) == evaluations(reference)
    return reference


def kill_after_a_checkpoint(process: subprocess.Popen, checkpoints: Path, past: int) -> int:
    """SIGKILLs the run `process` as soon as a checkpoint after step `past` is complete in `checkpoints`; returns
    the step of its latest checkpoint."""

    def saved() -> list[int]:
        return [int(p.name) for p in checkpoints.iterdir() if p.name.isdigit()] if checkpoints.exists() else []

    try:
        deadline = time.monotonic() + 120
        while not any(step > past for step in saved()):
            assert process.poll() is None and time.monotonic() < deadline, f"no checkpoint after step {past}"
            time.sleep(0.01)
        os.kill(process.pid, signal.SIGKILL)
    finally:
        process.wait()
    assert process.returncode == -signal.SIGKILL
    return max(saved())


def test_cli_resumes_after_sigkill_with_identical_parameters(
    uninterrupted_run: Path, full_size_fake_mnist: Path, tmp_path: Path, cli_env: dict[str, str]
) -> None:
    workdir = tmp_path / "run"
    checkpoints = workdir / CHECKPOINT_DIR
    # A length it cannot reach: killed while it trains however fast the machine, then resumed to a reachable one
    # (num_steps may change on resumption).
    process = subprocess.Popen(
        cli(workdir, full_size_fake_mnist, num_steps=10**9), cwd=REPO, env=cli_env, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    killed_at = kill_after_a_checkpoint(process, checkpoints, past=0)  # the first one
    reference = resume_as_uninterrupted(workdir, killed_at, uninterrupted_run, full_size_fake_mnist, cli_env)

    def scalars(run: Path) -> list[tuple[int, float]]:  # TensorBoard drops what the killed run wrote after it
        events = event_accumulator.EventAccumulator(str(run))
        events.Reload()
        return [(e.step, e.value) for e in events.Scalars("test_accuracy")]

    assert scalars(workdir) == scalars(reference)


def test_cli_checkpoints_by_the_clock_and_resumes_after_sigkill_with_identical_parameters(
    uninterrupted_run: Path, full_size_fake_mnist: Path, tmp_path: Path, cli_env: dict[str, str]
) -> None:
    """`checkpoint_every_seconds=1` in a run that reaches neither a `checkpoint_every` step nor its end: it
    checkpoints at its first boundary (step 100: no checkpoint yet, orbax's policy saves at once), then at a
    boundary a second or more later, the clock's own decision; killed (SIGKILL) once that one is complete, it
    resumes from it with the clock off (the key may change on resumption) to the uninterrupted run's parameters
    and evaluation records, train losses included."""
    workdir = tmp_path / "run"
    checkpoints = workdir / CHECKPOINT_DIR
    clock = ["--config.checkpoint_every=1000000000", "--config.checkpoint_every_seconds=1"]
    process = subprocess.Popen(
        [*cli(workdir, full_size_fake_mnist, num_steps=10**9), *clock, "--config.steps_per_dispatch=100"], cwd=REPO,
        env=cli_env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    killed_at = kill_after_a_checkpoint(process, checkpoints, past=100)  # one the clock decided
    resume_as_uninterrupted(workdir, killed_at, uninterrupted_run, full_size_fake_mnist, cli_env)


def test_cli_stopped_by_sigterm_checkpoints_says_so_and_resumes_exactly(
    uninterrupted_run: Path, full_size_fake_mnist: Path, tmp_path: Path, cli_env: dict[str, str]
) -> None:
    """SIGTERM (a scheduler's or a preemptible VM's notice) while the run trains, at a length it cannot reach:
    it finishes its dispatch of 100 steps, checkpoints there (between two evaluations, 500 apart: the checkpoint
    keeps the losses the next one averages), says so in one line and exits with 143; the same command resumes
    it to the uninterrupted run's parameters and evaluation records, train losses included."""
    workdir = tmp_path / "run"
    checkpoints = workdir / CHECKPOINT_DIR
    process = subprocess.Popen(
        [*cli(workdir, full_size_fake_mnist, num_steps=10**9), "--config.steps_per_dispatch=100"], cwd=REPO,
        env=cli_env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:  # SIGTERM once the first checkpoint (step 1000) is complete: then it trains
        deadline = time.monotonic() + 300
        while not (checkpoints.exists() and any(p.name.isdigit() for p in checkpoints.iterdir())):
            assert process.poll() is None and time.monotonic() < deadline, "no checkpoint before the run ended"
            time.sleep(0.01)
        os.kill(process.pid, signal.SIGTERM)
        stderr = process.communicate(timeout=300)[1]
    finally:
        process.kill()
        process.wait()
    assert process.returncode == 143, stderr[-3000:]
    line = stderr.strip().splitlines()[-1]
    found = re.fullmatch(r"stopped by SIGTERM at step (\d+); checkpoint saved; rerun the same command to resume", line)
    assert found and "Traceback" not in stderr, stderr[-3000:]
    stopped_at = int(found[1])
    assert stopped_at % 100 == 0 and stopped_at in [int(p.name) for p in checkpoints.iterdir() if p.name.isdigit()]

    resume_as_uninterrupted(workdir, stopped_at, uninterrupted_run, full_size_fake_mnist, cli_env)


@pytest.mark.parametrize("moment", ["Config:", "step 500/"])
def test_ctrl_c_at_start_up_compilation_or_training_is_one_line_and_exit_130(
    moment: str, full_size_fake_mnist: Path, tmp_path: Path, cli_env: dict[str, str]
) -> None:
    """Ctrl-C as the run starts (its config logged: next come the data, the model's initialization and the
    compilations) or while it trains (its first evaluation logged): one line, exit code 130, no traceback, and no
    crash of the interpreter's teardown while XLA works on other threads."""
    process = subprocess.Popen(
        with_ctrl_c(cli(tmp_path / "run", full_size_fake_mnist, num_steps=10**9)),
        cwd=REPO, env=cli_env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        seen = []
        for line in process.stderr:  # the log, line by line, until the moment
            seen.append(line)
            if moment in line:
                process.send_signal(signal.SIGINT)
                break
        stderr = "".join(seen) + process.communicate(timeout=300)[1]
    finally:
        process.kill()
        process.wait()
    assert moment in stderr and process.returncode == 130, stderr[-3000:]
    assert stderr.strip().splitlines()[-1] == "interrupted by SIGINT; rerun the same command to resume."
    assert "Traceback" not in stderr and "Fatal Python error" not in stderr, stderr[-3000:]


def test_reproduce_figure1_trains_both_nets_and_fails_loudly(
    full_size_fake_mnist: Path, tmp_path: Path, cli_env: dict[str, str]
) -> None:
    """The README's main command, shortened (2 seeds, `--seeds=2`): both nets' seeds train (a sweep, each net's seeds one vmapped group
    on a core of its own) into seed 0's run directory and its `_seedN` siblings, then the figure and the table
    over the seeds; a run that does not finish is reported with its error, nothing is plotted and the script exits
    with 1; a bad value or a misspelt key is refused before anything trains."""
    flags = ["--seeds=2", "--config.num_steps=400", "--config.eval_every=200", "--config.checkpoint_every=200",
             "--config.steps_per_dispatch=200", f"--config.data_dir={full_size_fake_mnist}"]  # fmt: skip
    env = {**cli_env, "RUNS_DIR": str(tmp_path / "runs")}
    done = subprocess.run(
        ["bash", "scripts/reproduce_figure1.sh", *flags], cwd=REPO, env=env, capture_output=True, text=True,
        timeout=300, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert (tmp_path / "runs" / "figure1.png").stat().st_size > 10_000 and "Figure 1 reproduced" in done.stdout
    for variant in ("baseline", "bn"):
        for seed in range(2):
            run = tmp_path / "runs" / (f"mnist_{variant}" if seed == 0 else f"mnist_{variant}_seed{seed}")
            assert json.loads((run / "config.json").read_text())["seed"] == seed
            assert [r["step"] for r in map(json.loads, (run / METRICS_FILE).open())] == [200, 400]
    assert "| with BN | 2 | 400 |" in done.stdout and "after step 5000 for every seed (seeds 0, 1, each" in done.stdout

    # A run that does not finish (here: refused, its directory holds a run made with another config) is reported
    # with its error and log, and nothing is plotted.
    figure = (tmp_path / "runs" / "figure1.png").read_bytes()
    changed = subprocess.run(
        ["bash", "scripts/reproduce_figure1.sh", *flags, "--config.learning_rate=0.2"], cwd=REPO, env=env,
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert changed.returncode == 1, changed.stdout[-3000:] + changed.stderr[-3000:]
    for name in ("mnist_baseline", "mnist_bn"):
        assert f"The {name} run failed: config changed since it was trained: " in changed.stdout, changed.stdout
    assert "Figure 1 reproduced" not in changed.stdout
    assert (tmp_path / "runs" / "figure1.png").read_bytes() == figure

    # A bad value is refused before anything trains, in one line naming a run and the key.
    env["RUNS_DIR"] = str(tmp_path / "failing")
    failed = subprocess.run(
        ["bash", "scripts/reproduce_figure1.sh", *flags, "--config.learning_rate=-1"], cwd=REPO, env=env,
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert failed.returncode == 2 and "Traceback" not in failed.stderr, failed.stdout[-3000:] + failed.stderr[-3000:]
    line = failed.stderr.strip().splitlines()[-1]
    assert line.startswith("error: sweep point mnist_baseline: config.learning_rate = -1.0"), line
    assert not (tmp_path / "failing").exists() and "Figure 1 reproduced" not in failed.stdout

    typo = subprocess.run(
        ["bash", "scripts/reproduce_figure1.sh", "--config.learning_rte=0.1"], cwd=REPO, env=env,
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert typo.returncode == 2 and "Traceback" not in typo.stderr, typo.stderr[-2000:]
    assert typo.stderr.startswith("error: ") and "config.learning_rte: unknown key" in typo.stderr


def test_a_workdir_under_tilde_is_in_home(full_size_fake_mnist: Path, tmp_path: Path, cli_env: dict[str, str]) -> None:
    """`--workdir=~/run` writes to $HOME/run, not to a folder named `~` in the working directory."""
    env = {**cli_env, "HOME": str(tmp_path / "home")}
    flags = ["--config.num_steps=20", "--config.eval_every=20", "--config.steps_per_dispatch=20",
             "--config.population_batches=5", f"--config.data_dir={full_size_fake_mnist}"]  # fmt: skip
    done = subprocess.run(
        [sys.executable, "-m", "bnrepro.main", f"--config={REPO / 'configs' / 'mnist_mlp.py'}:bn", "--workdir=~/run",
         *flags],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert [r["step"] for r in map(json.loads, (tmp_path / "home" / "run" / METRICS_FILE).open())] == [20]
    assert not (tmp_path / "~").exists()
