"""Mixed precision, `config.dtype = "bfloat16"`: activations, matmuls and convolutions in bfloat16; parameters,
optimizer state, logits, loss and every BN statistic (mini-batch moments, moving averages, Algorithm 2's
population statistics) in float32, as Haiku and Equinox keep them.

Checked against independent references: the dtypes of the traced program's matmuls and convolutions (forward and
backward), the outputs of every layer, a NumPy re-computation of Algorithm 2 from the net's own bfloat16 BN inputs,
and float32 training over the same mini-batches; the CLI end to end.
"""

import functools
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import numpy_reference as ref
import pytest
from config_files import fashion_table2, load_config_file, mnist_mlp
from fake_mnist import learnable_images, write_fake_mnist

from bnrepro import config_schema, layers
from bnrepro.models import create_model
from bnrepro.training import evaluation, run_dir, steps
from bnrepro.training.device_data import Dataset, epoch_permutation
from bnrepro.training.state import TrainState, create_train_state, preprocess

REPO = Path(__file__).resolve().parent.parent
DTYPES = ("float32", "bfloat16")
seq_mnist = load_config_file("seq_mnist")


def _config(name: str, dtype: str) -> ml_collections.ConfigDict:
    """A small config of each model family, computing in `dtype` (set as the CLI sets it: `config.dtype`)."""
    if name == "mlp":
        config = mnist_mlp.get_config("bn")
    elif name == "inception":  # the quick Table 2 net (x0.125, 28x28 input) cut after its first module: cheap
        config = fashion_table2.get_config("bn_x5,quick")
        config.model.num_modules = 1
    else:
        config = seq_mnist.get_config("bn_lstm,rows,quick")
    config.dtype = dtype
    config_schema.validate(config)
    return config


def _dataset(size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    labels = np.random.default_rng(seed).integers(0, 10, size).astype(np.int32)
    return learnable_images(labels, seed), labels


class Trained(NamedTuple):
    model: nn.Module
    state: TrainState
    losses: np.ndarray  # of every training step
    batches: dict[str, np.ndarray]  # the training set's first K mini-batches, (K, m, ...): images in [0, 1], labels


def _initial(name: str, num_examples: int, batch_size: int) -> dict[str, Trained]:
    """The `_config` net in each dtype, from one initial state: parameters and statistics are float32 in either
    (and drawn alike), so the bfloat16 net starts from float32's with its own `apply`. With the first (at most 4)
    mini-batches of its fake MNIST."""
    images, labels = _dataset(num_examples, seed=0)
    configs = {dtype: _config(name, dtype) for dtype in DTYPES}
    models = {dtype: create_model(config.model, config.dtype) for dtype, config in configs.items()}
    state = create_train_state(configs["float32"], models["float32"], jax.random.key(0), images[:batch_size])
    count = min(4, num_examples // batch_size) * batch_size
    batches = {
        "image": np.asarray(preprocess(jnp.asarray(images[:count]))).reshape((-1, batch_size) + images.shape[1:]),
        "label": labels[:count].reshape((-1, batch_size)),
    }
    no_losses = np.zeros(0, np.float32)
    return {
        dtype: Trained(model, state.replace(apply_fn=model.apply), no_losses, batches)
        for dtype, model in models.items()
    }


def _train(initial: Trained, num_examples: int, num_steps: int, per_dispatch: int) -> Trained:
    """`num_steps` of the trainer's own `train_steps` on `_initial`'s fake MNIST, every epoch in its own order (the
    same for either dtype), `per_dispatch` steps per compiled call."""
    state, batch_size = initial.state, initial.batches["label"].shape[1]
    run = jax.jit(steps.train_steps, static_argnames=("batch_size", "num_steps"))
    data, losses, steps_per_epoch = Dataset.create(*_dataset(num_examples, seed=0)), [], num_examples // batch_size
    for start in range(0, num_steps, per_dispatch):
        epoch, index = divmod(start, steps_per_epoch)
        permutation = epoch_permutation(state.rng, epoch, num_examples)
        state = state.replace(batch_index=jnp.asarray(index, jnp.int32))
        state, metrics = run(state, data, permutation, batch_size=batch_size, num_steps=per_dispatch)
        losses.append(np.asarray(metrics["loss"]))
    return initial._replace(state=state, losses=np.concatenate(losses))


@pytest.fixture(scope="module")
def mlps() -> dict[str, Trained]:
    """The BN MLP of Figure 1 in each dtype: 300 steps of 60 (3 epochs of 6,000 examples)."""
    return {
        dtype: _train(net, 6000, num_steps=300, per_dispatch=100) for dtype, net in _initial("mlp", 6000, 60).items()
    }


@pytest.fixture(scope="module")
def inceptions() -> dict[str, Trained]:
    """The x0.125 BN-Inception in each dtype: 12 steps of 16 (6 epochs of 32 examples, so that so few steps show
    learning), one step per dispatch as its config trains."""
    nets = _initial("inception", 32, 16)
    return {dtype: _train(net, 32, num_steps=12, per_dispatch=1) for dtype, net in nets.items()}


@pytest.fixture(scope="module")
def lstms() -> dict[str, Trained]:
    """The BN-LSTM on rows in each dtype, untrained."""
    return _initial("lstm", 100, 100)


# --- What runs in which dtype ---------------------------------------------------------------------------------


def _equations(jaxpr: Any) -> Iterator[Any]:
    """Every equation of `jaxpr`, those of the programs nested in it (jit, scan, custom_vjp, ...) included."""
    for equation in jaxpr.eqns:
        yield equation
        for value in equation.params.values():
            for sub in value if isinstance(value, (tuple, list)) else (value,):
                if hasattr(sub, "eqns"):
                    yield from _equations(sub)
                elif hasattr(getattr(sub, "jaxpr", None), "eqns"):
                    yield from _equations(sub.jaxpr)


def _matmul_dtypes(state: TrainState, batch: dict) -> set[str]:
    """The dtypes of the operands and results of every matmul and convolution in a training step."""
    jaxpr = jax.make_jaxpr(steps.train_step)(state, batch).jaxpr
    found = [e for e in _equations(jaxpr) if e.primitive.name in ("dot_general", "conv_general_dilated")]
    assert found
    return {str(v.aval.dtype) for e in found for v in (*e.invars, *e.outvars)}


def _floating_dtypes(tree: Any) -> set[str]:
    return {str(leaf.dtype) for leaf in jax.tree.leaves(tree) if jnp.issubdtype(leaf.dtype, jnp.floating)}


@pytest.mark.parametrize("net", [pytest.param("mlps", marks=pytest.mark.accelerator), "inceptions", "lstms"])
def test_matmuls_run_in_the_compute_dtype_and_the_state_stays_float32(net: str, request) -> None:
    """Every matmul and convolution of a training step, forward and backward, takes and gives bfloat16 under
    bfloat16 (float32 under float32); the parameters, BN's moving averages and the optimizer state are float32 as
    the net initializes them, after training and after one more step, and the loss is float32."""
    for dtype, (model, state, _, batches) in request.getfixturevalue(net).items():
        batch = {key: jnp.asarray(value[0]) for key, value in batches.items()}
        assert _matmul_dtypes(state, batch) == {dtype}
        initialized = jax.eval_shape(functools.partial(model.init, train=False), jax.random.key(0), batch["image"])
        stepped, metrics = jax.eval_shape(steps.train_step, state, batch)
        assert _floating_dtypes({key: initialized[key] for key in ("params", "batch_stats")}) == {"float32"}
        for s in (state, stepped):
            assert _floating_dtypes((s.params, s.batch_stats, s.opt_state)) == {"float32"}, dtype
        assert jax.tree.leaves(stepped.batch_stats) and jax.tree.leaves(stepped.opt_state)
        assert metrics["loss"].dtype == jnp.float32


@pytest.mark.parametrize("net", ["mlps", "inceptions"])
def test_every_layer_outputs_bfloat16_and_the_logits_are_float32(net: str, request) -> None:
    """The output of every layer (Dense, Conv, BatchNorm, DenseBN/ConvBN, the Inception modules, the classifier's
    matmul), in training and in inference, is bfloat16; only the network's output, the logits, is float32."""
    model, state, _, batches = request.getfixturevalue(net)["bfloat16"]
    variables = {"params": state.params, "batch_stats": state.batch_stats}
    for train in (True, False):
        apply = functools.partial(
            model.apply, train=train, mutable=["batch_stats", "intermediates"], capture_intermediates=True
        )
        logits, collections = jax.eval_shape(apply, variables, batches["image"][0])
        captured = dict(collections["intermediates"])
        network_output = captured.pop("__call__")
        layers_out = {jax.tree_util.keystr(path): x.dtype for path, x in jax.tree_util.tree_leaves_with_path(captured)}
        assert len(layers_out) > 10 and {str(d) for d in layers_out.values()} == {"bfloat16"}, layers_out
        assert network_output[0].dtype == logits.dtype == jnp.float32


# --- Training in bfloat16 against float32 ----------------------------------------------------------------------


@pytest.mark.accelerator
def test_bfloat16_mlp_trains_as_float32_does(mlps: dict[str, Trained]) -> None:
    """From the same initial parameters over the same 300 mini-batches, the bfloat16 MLP's training loss (mean of
    the last 100 steps) is within 2% of float32's. The margin: bfloat16 keeps 8 significant bits (rounding 2^-9
    relative), so every step differs a little and the runs drift apart, but no more than float32 runs drift that
    differ only in their seed: 0.0839-0.0850 over seeds 0-2 (1.4%, measured). bfloat16 measured within 0.02%."""
    float32, bfloat16 = (mlps[d].losses for d in DTYPES)
    assert float32[-100:].mean() < 0.1 * float32[:10].mean()  # it learns: ~2.09 -> ~0.085
    assert bfloat16[-100:].mean() == pytest.approx(float32[-100:].mean(), rel=0.02)
    assert not np.array_equal(bfloat16, float32)  # it did compute in bfloat16


def test_bfloat16_inception_trains_as_float32_does(inceptions: dict[str, Trained]) -> None:
    """The x0.125 BN-Inception (Table 2's CPU-scale net, one Inception module), from the same initial parameters over
    the same 12 mini-batches of 16: every step's bfloat16 loss is within 1% of float32's. The margin: 10x the
    largest gap measured over seeds 0-2 (0.11%; bfloat16's rounding is 2^-9 = 0.2% relative per value, averaged
    over many in the loss), far below the loss's fall over these steps (~25%)."""
    float32, bfloat16 = (inceptions[d].losses for d in DTYPES)
    assert float32[-4:].mean() < 0.85 * float32[:2].mean()  # it learns
    np.testing.assert_allclose(bfloat16, float32, rtol=0.01)
    assert not np.array_equal(bfloat16, float32)


# --- Algorithm 2 in bfloat16 -----------------------------------------------------------------------------------


@functools.partial(jax.jit, static_argnums=0)
def _batch_norm_inputs(model: nn.Module, state: TrainState, images: jax.Array) -> dict[tuple[str, ...], jax.Array]:
    """The input of every `BatchNorm` of the training network on one mini-batch, by the layer's path: as it
    arrives (its dtype) and as the layer's statistics read it, upcast to float32 (its values). XLA:CPU computes a
    bfloat16 matmul in float32 and, by default (`--xla_allow_excess_precision`), may hand a consumer that upcasts
    the float32 result without rounding it to bfloat16 in between; the upcast here is such a consumer too."""
    inputs = {}

    def record(call, args, kwargs, context):
        if isinstance(context.module, layers.BatchNorm) and context.method_name == "__call__":
            inputs[context.module.scope.path] = (args[0], args[0].astype(jnp.float32))
        return call(*args, **kwargs)

    with nn.intercept_methods(record):
        model.apply(
            {"params": state.params, "batch_stats": state.batch_stats}, images, train=True, mutable=["batch_stats"]
        )
    return inputs


@pytest.mark.accelerator
def test_population_statistics_are_float32_moments_of_the_bfloat16_activations(mlps: dict[str, Trained]) -> None:
    """Algorithm 2, steps 8-9, of the trained bfloat16 MLP: E[x] = E_B[mu_B] and Var[x] = m/(m-1) E_B[var_B] over
    K = 4 training mini-batches of m = 60, in float32, equal (to float32 rounding) to NumPy's float64 re-computation
    (`numpy_reference`) from the bfloat16 inputs of each BN layer (`_batch_norm_inputs`). (Convolutions, m = N*H*W,
    share the code path: `tests/test_layers.py` checks them in float32.)"""
    model, state, _, batches = mlps["bfloat16"]
    moments = jax.jit(functools.partial(steps.batch_moments, model))
    images = ({"image": jnp.asarray(images)} for images in batches["image"])
    population = evaluation.population_statistics(moments, jax.jit(steps.population), state, images)
    per_batch = [_batch_norm_inputs(model, state, jnp.asarray(images)) for images in batches["image"]]
    assert per_batch[0] and {str(x.dtype) for x, _ in per_batch[0].values()} == {"bfloat16"}
    for path in per_batch[0]:
        xs = [np.asarray(inputs[path][1], np.float64) for inputs in per_batch]
        mean, var = ref.bn_population([x.mean(0) for x in xs], [x.var(0) for x in xs], m=len(xs[0]))
        stats = functools.reduce(lambda tree, key: tree[key], path, population)
        assert stats["mean"].dtype == stats["var"].dtype == jnp.float32
        np.testing.assert_allclose(stats["mean"], mean, rtol=1e-5, atol=1e-6, err_msg=str(path))
        np.testing.assert_allclose(stats["var"], var, rtol=1e-5, err_msg=str(path))


# --- The config key ---------------------------------------------------------------------------------------------


def test_dtype_is_one_key_of_the_run_not_of_the_model() -> None:
    config = mnist_mlp.get_config("bn")
    assert create_model(config.model, "bfloat16").dtype == "bfloat16"
    with pytest.raises(ValueError, match=r"config\.model\.dtype: unknown key"):
        config_schema.validate(ml_collections.ConfigDict({**config.to_dict(), "model": {**config.model, "dtype": "x"}}))
    with pytest.raises(ValueError, match=r"config\.dtype = 'float16x': expected one of \['float32', 'bfloat16'\]"):
        config_schema.validate(ml_collections.ConfigDict({**config.to_dict(), "dtype": "float16x"}))


def test_a_run_made_before_dtype_existed_resumes_in_float32() -> None:
    """Its config.json has no `dtype` keys: it computed in float32, so it resumes under float32, not bfloat16."""
    config = mnist_mlp.get_config("bn")
    saved = {k: v for k, v in run_dir.config_json(config).items() if k != "dtype"}
    changes = run_dir.config_changes(saved, config, config_schema.RENAMED_KEYS, config_schema.IMPLICIT_IN_OLD_RUNS)
    assert changes == {}
    config.dtype = "bfloat16"
    changes = run_dir.config_changes(saved, config, config_schema.RENAMED_KEYS, config_schema.IMPLICIT_IN_OLD_RUNS)
    assert changes == {"dtype": ("float32", "bfloat16")}


# --- The command line -------------------------------------------------------------------------------------------


def _main(workdir: Path, *overrides: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "bnrepro.main", "--config=configs/mnist_mlp.py:bn", f"--workdir={workdir}"]
    return subprocess.run([*command, *overrides], cwd=REPO, capture_output=True, text=True, timeout=300, check=False)


def test_cli_trains_in_bfloat16(tmp_path: Path) -> None:
    data_dir = write_fake_mnist(tmp_path / "mnist", {"train": 50_000, "valid": 10_000, "test": 10_000})
    workdir = tmp_path / "run"
    steps_flags = [f"--config.{k}=300" for k in ("num_steps", "eval_every", "checkpoint_every", "steps_per_dispatch")]
    result = _main(workdir, "--config.dtype=bfloat16", *steps_flags, "--config.population_batches=5",
                   f"--config.data_dir={data_dir}")  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    recorded = json.loads((workdir / run_dir.CONFIG_FILE).read_text())
    assert recorded["dtype"] == "bfloat16" and "dtype" not in recorded["model"]
    (record,) = [json.loads(line) for line in (workdir / run_dir.METRICS_FILE).read_text().splitlines()]
    assert record["step"] == 300 and record["test_accuracy"] > 0.9  # the fake data is learnable


def test_cli_refuses_an_unknown_dtype_in_one_line(tmp_path: Path) -> None:
    result = _main(tmp_path / "run", "--config.dtype=float16x")
    assert result.returncode == 2, result.stderr[-2000:]
    message = "error: config.dtype = 'float16x': expected one of ['float32', 'bfloat16']."
    assert message in result.stderr and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert not (tmp_path / "run").exists()
