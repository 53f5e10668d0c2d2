"""The LSTM and BN-LSTM of Cooijmans et al. (2016) (`bnrepro.models.lstm`, issue 7 part 2): the forward pass in
training and inference against a NumPy re-derivation of their Eqs. 6-8, statistics per time step (and step T-1's
reused beyond T), Algorithm 2's population statistics per time step, the LSTM against flax's `LSTMCell`, and
sequential MNIST end to end through `train_and_evaluate` on a fake MNIST."""

import functools
import json
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from config_files import load_config_file
from training_run import train_and_evaluate

from bnrepro import config_schema, layers
from bnrepro.models import lstm
from bnrepro.training.run_dir import METRICS_FILE

seq_mnist = load_config_file("seq_mnist")
BN_LAYERS = ("bn_hidden", "bn_input", "bn_cell")
EPS = 1e-3  # larger than the default, so that a wrong eps would show


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def reference_lstm(params: dict, xs: np.ndarray, *, batch_norm: bool, stats: dict | None = None):
    """Cooijmans et al. Eqs. 6-8 in NumPy (float64) on sequences `xs` (N, T, d), gates i, f, g, o; returns the
    logits of the softmax layer on h_T and each BN layer's per-step mini-batch moments (mean, biased var).
    `stats` None: training, BN on the mini-batch's moments at each step; else inference with stats[layer]
    = {"mean", "var"} (T', F), step t reading row min(t, T'-1)."""
    p = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
    cell = p["lstm"]
    n, steps, _ = xs.shape
    hidden = cell["hidden"]["kernel"].shape[0]
    moments = {name: {"mean": [], "var": []} for name in BN_LAYERS}

    def bn(name: str, x: np.ndarray, t: int) -> np.ndarray:
        if stats is None:
            mean, var = x.mean(0), x.var(0)
            moments[name]["mean"].append(mean)
            moments[name]["var"].append(var)
        else:
            row = min(t, len(stats[name]["mean"]) - 1)
            mean, var = np.asarray(stats[name]["mean"][row]), np.asarray(stats[name]["var"][row])
        beta = cell[name].get("bias", 0.0)  # no beta on W_h h and W_x x
        return cell[name]["scale"] * (x - mean) / np.sqrt(var + EPS) + beta

    c = h = np.zeros((n, hidden))
    for t in range(steps):
        recurrent, inputs = h @ cell["hidden"]["kernel"], xs[:, t] @ cell["input"]["kernel"]
        if batch_norm:
            recurrent, inputs = bn("bn_hidden", recurrent, t), bn("bn_input", inputs, t)
        i, f, g, o = np.split(recurrent + inputs + cell["bias"], 4, axis=1)
        c = _sigmoid(f) * c + _sigmoid(i) * np.tanh(g)
        h = _sigmoid(o) * np.tanh(bn("bn_cell", c, t) if batch_norm else c)
    logits = h @ p["classifier"]["kernel"] + p["classifier"]["bias"]
    return logits, {k: {s: np.stack(v) for s, v in m.items()} for k, m in moments.items() if m["mean"]}


def _model(batch_norm: bool = True, momentum: float = 0.99, **kwargs) -> lstm.LSTMClassifier:
    norm = functools.partial(layers.BatchNorm, eps=EPS, momentum=momentum)
    return lstm.LSTMClassifier(hidden_size=6, batch_norm=batch_norm, sequence="rows", norm=norm, **kwargs)


@functools.partial(jax.jit, static_argnums=(0, 2))  # one program (op by op, the init's many small ops cost seconds)
def _random_variables(model: lstm.LSTMClassifier, xs: jax.Array, seed: int = 0) -> dict:
    """The model's variables with every parameter and statistic random (variances positive), so that no term
    of the equations hides behind its initial value."""
    variables = model.init(jax.random.key(seed), xs, train=False)
    leaves, treedef = jax.tree.flatten(variables)
    keys = jax.random.split(jax.random.key(seed + 1), len(leaves))
    rand = [0.5 * jax.random.normal(k, leaf.shape) for k, leaf in zip(keys, leaves)]
    randomized = jax.tree.unflatten(treedef, rand)
    if "batch_stats" in randomized:
        randomized["batch_stats"] = jax.tree_util.tree_map_with_path(
            lambda path, v: jnp.abs(v) + 0.2 if path[-1].key == "var" else v, randomized["batch_stats"]
        )
    return randomized


def _sequences(n: int = 8, steps: int = 5, width: int = 3, seed: int = 0) -> jax.Array:
    return jax.random.uniform(jax.random.key(100 + seed), (n, steps, width))


def test_bn_lstm_training_pass_matches_numpy_and_moves_each_steps_average_toward_its_own_moments() -> None:
    model, xs = _model(momentum=0.8), _sequences()
    variables = _random_variables(model, xs)
    logits, updates = model.apply(variables, xs, train=True, mutable=["batch_stats"])
    expected, moments = reference_lstm(variables["params"], np.asarray(xs, np.float64), batch_norm=True)
    np.testing.assert_allclose(logits, expected, rtol=1e-4, atol=1e-5)
    n = xs.shape[0]
    for name in BN_LAYERS:
        old, new = variables["batch_stats"]["lstm"][name], updates["batch_stats"]["lstm"][name]
        assert new["mean"].shape == (5, old["mean"].shape[1])  # one row per time step
        # Step t's running moments move toward step t's mini-batch moments (var unbiased, Algorithm 2).
        np.testing.assert_allclose(new["mean"], 0.8 * old["mean"] + 0.2 * moments[name]["mean"], rtol=1e-4, atol=1e-5)
        unbiased = n / (n - 1) * moments[name]["var"]
        np.testing.assert_allclose(new["var"], 0.8 * old["var"] + 0.2 * unbiased, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("steps", [5, 2, 9])  # the stored length, shorter, longer (steps >= 5 reuse step 4's)
def test_bn_lstm_inference_matches_numpy_with_per_step_statistics(steps: int) -> None:
    model = _model()
    variables = _random_variables(model, _sequences(steps=5))  # statistics for T = 5 steps
    stats = variables["batch_stats"]["lstm"]
    assert not np.allclose(stats["bn_cell"]["mean"][0], stats["bn_cell"]["mean"][4])  # steps differ
    xs = _sequences(steps=steps, seed=1)
    logits = model.apply(variables, xs, train=False)
    expected, _ = reference_lstm(variables["params"], np.asarray(xs, np.float64), batch_norm=True, stats=stats)
    np.testing.assert_allclose(logits, expected, rtol=1e-4, atol=1e-5)


def test_training_on_another_length_than_the_statistics_is_refused() -> None:
    model = _model()
    variables = _random_variables(model, _sequences(steps=5))
    with pytest.raises(ValueError, match="training on sequences of 7 steps, but the BN statistics have 5"):
        model.apply(variables, _sequences(steps=7), train=True, mutable=["batch_stats"])


def test_bn_lstm_parameters_and_initialization() -> None:
    """gamma = 0.1 everywhere, beta_c = 0 and no beta on W_h h, W_x x (Cooijmans et al. Sec. 4, Eq. 6); statistics
    (T, features) start at mean 0, var 1; W_h's cell-input block is the identity and the rest of W_h and W_x
    orthogonal; b is 0 but the forget gate's 1 (the authors' code)."""
    variables = lstm.LSTMClassifier(hidden_size=6, sequence="rows").init(jax.random.key(0), _sequences(), train=False)
    cell = variables["params"]["lstm"]
    assert set(cell["bn_hidden"]) == set(cell["bn_input"]) == {"scale"}
    for name, width in (("bn_hidden", 24), ("bn_input", 24), ("bn_cell", 6)):
        np.testing.assert_array_equal(cell[name]["scale"], np.full(width, 0.1, np.float32))
        stats = variables["batch_stats"]["lstm"][name]
        np.testing.assert_array_equal(stats["mean"], np.zeros((5, width)))
        np.testing.assert_array_equal(stats["var"], np.ones((5, width)))
    np.testing.assert_array_equal(cell["bn_cell"]["bias"], np.zeros(6))
    recurrent = np.asarray(cell["hidden"]["kernel"])
    np.testing.assert_array_equal(recurrent[:, 12:18], np.eye(6))
    others = np.concatenate([recurrent[:, :12], recurrent[:, 18:]], axis=1)
    np.testing.assert_allclose(others @ others.T, np.eye(6), atol=1e-5)  # orthonormal rows, as orthogonal() gives
    inputs = np.asarray(cell["input"]["kernel"])  # (3, 24)
    np.testing.assert_allclose(inputs @ inputs.T, np.eye(3), atol=1e-5)
    np.testing.assert_array_equal(cell["bias"], np.r_[np.zeros(6), np.ones(6), np.zeros(12)])


def test_lstm_without_bn_matches_flax_lstm_cell_and_numpy() -> None:
    model, xs = _model(batch_norm=False), _sequences()
    variables = _random_variables(model, xs)
    assert "batch_stats" not in variables
    logits = model.apply(variables, xs, train=True)
    expected, _ = reference_lstm(variables["params"], np.asarray(xs, np.float64), batch_norm=False)
    np.testing.assert_allclose(logits, expected, rtol=1e-4, atol=1e-5)
    # The same weights in flax's LSTMCell: one Dense per gate, the bias on the hidden-to-hidden ones.
    cell = variables["params"]["lstm"]
    blocks = {name[0]: np.split(np.asarray(cell[name]["kernel"]), 4, axis=1) for name in ("hidden", "input")}
    biases = np.split(np.asarray(cell["bias"]), 4)
    flax_params = {}
    for k, gate in enumerate("ifgo"):
        flax_params["h" + gate] = {"kernel": blocks["h"][k], "bias": biases[k]}
        flax_params["i" + gate] = {"kernel": blocks["i"][k]}
    flax_cell = nn.LSTMCell(6)
    carry = (jnp.zeros((8, 6)), jnp.zeros((8, 6)))
    for t in range(xs.shape[1]):
        carry, _ = flax_cell.apply({"params": flax_params}, carry, xs[:, t])
    classifier = variables["params"]["classifier"]
    np.testing.assert_allclose(logits, carry[1] @ classifier["kernel"] + classifier["bias"], rtol=1e-5, atol=1e-6)


def test_population_statistics_per_time_step_equal_numpy_over_k_batches() -> None:
    model = _model()
    batches = jax.random.uniform(jax.random.key(7), (3, 8, 5, 3))  # K = 3 mini-batches of 8 sequences
    variables = _random_variables(model, batches[0])
    population = layers.population_statistics(model, variables, batches)
    per_batch = [reference_lstm(variables["params"], np.asarray(b, np.float64), batch_norm=True)[1] for b in batches]
    for name in BN_LAYERS:
        mean = np.mean([m[name]["mean"] for m in per_batch], axis=0)
        var = 8 / 7 * np.mean([m[name]["var"] for m in per_batch], axis=0)
        assert population["lstm"][name]["mean"].shape == mean.shape and mean.shape[0] == 5
        np.testing.assert_allclose(population["lstm"][name]["mean"], mean, rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(population["lstm"][name]["var"], var, rtol=1e-4, atol=1e-6)


def test_sequences_of_pixels_rows_and_the_fixed_permutation() -> None:
    images = jnp.arange(2 * 4 * 5, dtype=jnp.float32).reshape(2, 4, 5)
    flat = np.asarray(images).reshape(2, 20)
    np.testing.assert_array_equal(lstm.image_sequence(images, "pixels", False), flat[:, :, None])
    np.testing.assert_array_equal(lstm.image_sequence(images, "rows", False), np.asarray(images))
    order = np.random.default_rng(0).permutation(20)
    np.testing.assert_array_equal(lstm.image_sequence(images, "pixels", True), flat[:, order, None])
    np.testing.assert_array_equal(lstm.image_sequence(images, "rows", True), flat[:, order].reshape(2, 4, 5))


def test_h0_noise_draws_from_the_dropout_stream_in_training_only() -> None:
    xs = _sequences()
    noisy, clean = _model(h0_noise=0.5), _model()
    variables = _random_variables(clean, xs)

    def train_logits(model, seed):
        rngs = {"dropout": jax.random.key(seed)}
        return model.apply(variables, xs, train=True, mutable=["batch_stats"], rngs=rngs)[0]

    assert not np.allclose(train_logits(noisy, 0), train_logits(clean, 0))
    assert not np.allclose(train_logits(noisy, 0), train_logits(noisy, 1))
    np.testing.assert_array_equal(noisy.apply(variables, xs, train=False), clean.apply(variables, xs, train=False))


@pytest.mark.parametrize("variant", ["lstm", "bn_lstm", "lstm,permuted", "bn_lstm,permuted", "bn_lstm,rows,quick"])
def test_seq_mnist_configs_are_valid(variant: str) -> None:
    config = seq_mnist.get_config(variant)
    config_schema.validate(config)
    assert config.model.batch_norm == variant.startswith("bn_lstm")
    assert (config.optimizer, config.learning_rate, config.grad_clip_norm) == ("rmsprop", 1e-3, 1.0)
    with pytest.raises(ValueError, match="unknown variant"):
        seq_mnist.get_config(variant + ",sideways")


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [("sequence", "columns", r"config\.model\.sequence = 'columns': expected one of \['pixels', 'rows'\]"),
     ("hidden_size", 0, r"config\.model\.hidden_size = 0: must be >= 1"),
     ("gamma_init", 0.0, r"config\.model\.gamma_init = 0\.0: must be a positive finite number"),
     ("h0_noise", -0.1, r"config\.model\.h0_noise = -0\.1: must be >= 0")],
)  # fmt: skip
def test_bad_model_values_name_the_key(key: str, value, message: str) -> None:
    config = seq_mnist.get_config("bn_lstm")
    config.model[key] = value
    with pytest.raises(ValueError, match=message):
        config_schema.validate(config)


def test_bn_lstm_learns_rows_of_a_fake_mnist_end_to_end(small_fake_mnist: Path, tmp_path: Path) -> None:
    config = seq_mnist.get_config("bn_lstm,rows,quick")
    config.update({"data_dir": str(small_fake_mnist), "num_steps": 60, "eval_every": 30, "steps_per_dispatch": 30,
                   "checkpoint_every": 60, "batch_size": 40, "population_batches": 5})  # fmt: skip
    state = train_and_evaluate(config, tmp_path / "run")
    records = [json.loads(line) for line in (tmp_path / "run" / METRICS_FILE).read_text().splitlines()]
    assert [r["step"] for r in records] == [30, 60]
    assert records[-1]["test_accuracy"] > 0.5  # chance: 0.1; evaluated with per-step population statistics
    assert state.batch_stats["lstm"]["bn_cell"]["mean"].shape == (28, 100)
