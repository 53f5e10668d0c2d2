"""bnrepro.diagnostics against a by-hand forward pass of the baseline MLP (NumPy for the preactivations, a
plain jnp re-derivation of the loss for the gradient norms) and against BN's inference map (Algorithm 2)."""

import functools
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from config_files import mnist_mlp
from training_run import train_and_evaluate

import bnrepro.data
from bnrepro import diagnostics
from bnrepro.models import create_model
from bnrepro.sweep.group import train_group
from bnrepro.training.device_data import Dataset, epoch_permutation
from bnrepro.training.run_dir import DIAGNOSTICS_FILE, METRICS_FILE
from bnrepro.training.state import TrainState, create_train_state, current_learning_rate, preprocess


def _state(variant: str) -> TrainState:
    config = mnist_mlp.get_config(variant)
    model = create_model(config.model)
    return create_train_state(config, model, jax.random.key(0), jnp.zeros((8, 28, 28), jnp.uint8))


def _sigmoid(x):
    return 1 / (1 + np.exp(-x))


def test_preactivations_and_gradient_norms_of_the_baseline_by_hand():
    state = _state("baseline")
    images = np.asarray(jax.random.uniform(jax.random.key(1), (8, 28, 28)))
    labels = np.arange(8) % 10
    p = jax.tree.map(np.asarray, state.params)
    u, expected = images.reshape(8, -1), {}
    for i in range(3):
        dense = p[f"DenseBN_{i}"]["Dense_0"]
        expected[f"DenseBN_{i}"] = u @ dense["kernel"] + dense["bias"]
        u = _sigmoid(expected[f"DenseBN_{i}"])
    got = jax.jit(diagnostics.layer_preactivations)(state, images)
    assert sorted(got) == sorted(expected)
    for name, value in expected.items():
        np.testing.assert_allclose(got[name], value, rtol=1e-5, atol=1e-5)

    def loss(kernels):
        u = jnp.asarray(images.reshape(8, -1))
        for i in range(3):
            u = jax.nn.sigmoid(u @ kernels[i] + p[f"DenseBN_{i}"]["Dense_0"]["bias"])
        logits = u @ kernels[3] + p["Dense_0"]["bias"]
        return -jnp.mean(jax.nn.log_softmax(logits)[jnp.arange(8), labels])

    kernels = [p[f"DenseBN_{i}"]["Dense_0"]["kernel"] for i in range(3)] + [p["Dense_0"]["kernel"]]
    grads = jax.jit(jax.grad(loss))(kernels)  # here and below: one compiled program each rather than op by op
    norms = jax.jit(diagnostics.layer_gradient_norms)(state, {"image": images, "label": labels})
    names = [f"DenseBN_{i}/Dense_0" for i in range(3)] + ["Dense_0"]
    np.testing.assert_allclose([norms[n] for n in names], [np.linalg.norm(g) for g in grads], rtol=1e-4)


def test_bn_preactivations_use_the_population_statistics():
    state = _state("bn")
    stats = jax.tree.map(lambda x: x + 0.5, state.batch_stats)  # non-trivial statistics
    state = state.replace(batch_stats=stats)
    images = np.asarray(jax.random.uniform(jax.random.key(2), (8, 28, 28)))
    kernel = np.asarray(state.params["DenseBN_0"]["Dense_0"]["kernel"])
    bn = state.params["DenseBN_0"]["BatchNorm_0"]
    moments = stats["DenseBN_0"]["BatchNorm_0"]
    x = images.reshape(8, -1) @ kernel
    expected = bn["scale"] * (x - moments["mean"]) / np.sqrt(moments["var"] + 1e-5) + bn["bias"]
    got = jax.jit(diagnostics.layer_preactivations)(state, images)["DenseBN_0"]
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)


def test_internal_covariate_shift_of_a_small_baseline_net_by_hand():
    config = mnist_mlp.get_config("baseline")
    config.model.hidden = (5, 4)
    model = create_model(config.model)
    state = create_train_state(config, model, jax.random.key(0), jnp.zeros((6, 28, 28), jnp.uint8))
    images = jax.random.uniform(jax.random.key(1), (6, 28, 28))
    labels = jnp.arange(6) % 10
    p = state.params
    biases = [p["DenseBN_0"]["Dense_0"]["bias"], p["DenseBN_1"]["Dense_0"]["bias"], p["Dense_0"]["bias"]]

    def loss(kernels):  # the same net, written out
        u = images.reshape(6, -1)
        for kernel, bias in zip(kernels[:2], biases[:2]):
            u = jax.nn.sigmoid(u @ kernel + bias)
        logits = u @ kernels[2] + biases[2]
        return -jnp.mean(jax.nn.log_softmax(logits)[jnp.arange(6), labels])

    kernels = [p["DenseBN_0"]["Dense_0"]["kernel"], p["DenseBN_1"]["Dense_0"]["kernel"], p["Dense_0"]["kernel"]]
    gradient = jax.jit(jax.grad(loss))  # compiled once for the four gradients below, rather than op by op
    grads, lr = gradient(kernels), 0.5
    order = ["DenseBN_0/Dense_0", "DenseBN_1/Dense_0", "Dense_0"]
    ics = functools.partial(diagnostics.internal_covariate_shift, layer_order=order, learning_rate=lr)
    got = jax.jit(ics)(state, {"image": images, "label": labels})
    for i, layer in enumerate(order):
        stepped = [k - lr * g if j < i else k for j, (k, g) in enumerate(zip(kernels, grads))]
        shifted = gradient(stepped)[i]
        g = np.asarray(grads[i])
        np.testing.assert_allclose(got[layer]["l2"], np.linalg.norm(g - shifted), rtol=1e-4, atol=1e-7)
        cosine = np.sum(g * shifted) / (np.linalg.norm(g) * np.linalg.norm(shifted))
        np.testing.assert_allclose(got[layer]["cosine"], cosine, rtol=1e-5)
    assert float(got[order[0]]["l2"]) == 0.0 and float(got[order[2]]["l2"]) > 0.0  # the first layer sees no shift
    with pytest.raises(ValueError, match=r"no kernel at \[.DenseBN_7.\]"):
        diagnostics.internal_covariate_shift(state, {"image": images, "label": labels}, ["DenseBN_7"], lr)


def _small_net(variant: str):
    config = mnist_mlp.get_config(variant)
    config.model.hidden = (5, 4)
    model = create_model(config.model)
    state = create_train_state(config, model, jax.random.key(0), jnp.zeros((6, 28, 28), jnp.uint8))
    images = jax.random.uniform(jax.random.key(1), (6, 28, 28))
    return state, {"image": images, "label": jnp.arange(6) % 10}


def test_loss_landscape_of_a_small_baseline_net_by_hand():
    state, batch = _small_net("baseline")
    images, labels = batch["image"].reshape(6, -1), batch["label"]
    names = ["DenseBN_0/Dense_0", "DenseBN_1/Dense_0", "Dense_0"]

    def loss(p):  # the same net, written out, over all its parameters
        u = images
        for name in names[:2]:
            u = jax.nn.sigmoid(u @ p[name]["kernel"] + p[name]["bias"])
        logits = u @ p[names[2]]["kernel"] + p[names[2]]["bias"]
        return -jnp.mean(jax.nn.log_softmax(logits)[jnp.arange(6), labels])

    p = {name: {k: state.params[name.split("/")[0]][k] if name == "Dense_0" else state.params[name.split("/")[0]][
        "Dense_0"][k] for k in ("kernel", "bias")} for name in names}  # fmt: skip
    loss, gradient = jax.jit(loss), jax.jit(jax.grad(loss))  # compiled once for every point, rather than op by op
    g = gradient(p)
    g_flat = np.concatenate([np.ravel(x) for x in jax.tree.leaves(g)])
    etas = np.array([0.5, 2.0, 8.0])
    losses, changes = [], []
    for eta in etas:
        moved = jax.tree.map(lambda a, b, eta=eta: a - eta * b, p, g)
        losses.append(float(loss(moved)))
        moved_g = np.concatenate([np.ravel(x) for x in jax.tree.leaves(gradient(moved))])
        changes.append(np.linalg.norm(g_flat - moved_g))
    got = jax.jit(diagnostics.loss_landscape)(state, batch, etas)
    np.testing.assert_allclose(got["losses"], losses, rtol=1e-5)
    np.testing.assert_allclose(got["gradient_changes"], changes, rtol=1e-4)
    every = [float(loss(p))] + losses
    np.testing.assert_allclose(got["loss_variation"], max(every) - min(every), rtol=1e-4)
    np.testing.assert_allclose(got["gradient_predictiveness"], max(changes), rtol=1e-4)
    smoothness = max(c / (eta * np.linalg.norm(g_flat)) for c, eta in zip(changes, etas))
    np.testing.assert_allclose(got["beta_smoothness"], smoothness, rtol=1e-4)
    assert got["loss_variation"] > 0 and got["gradient_predictiveness"] > 0


def test_jacobian_singular_values_of_a_bn_layer_by_hand():
    """u -> sigmoid(BN(uW)) with the mini-batch's moments fixed: J = diag(sigmoid'(z)) diag(gamma / sqrt(var_B +
    eps)) W^T per example, its singular values by NumPy's SVD; the first layer's input is the flattened image."""
    state, batch = _small_net("bn")
    params = jax.tree.map(np.asarray, state.params)
    params["DenseBN_1"]["BatchNorm_0"]["scale"] = np.linspace(0.5, 2.0, 4, dtype=np.float32)  # non-trivial gamma
    state = state.replace(params=params)
    u = np.asarray(batch["image"], np.float64).reshape(6, -1)
    expected = {}
    for layer in ("DenseBN_0", "DenseBN_1"):
        w = params[layer]["Dense_0"]["kernel"].astype(np.float64)
        bn = params[layer]["BatchNorm_0"]
        x = u @ w
        inv = 1 / np.sqrt(x.var(axis=0) + 1e-5)
        z = bn["scale"] * (x - x.mean(axis=0)) * inv + bn["bias"]
        out = _sigmoid(z)
        jacobians = [(out_i * (1 - out_i) * bn["scale"] * inv)[:, None] * w.T for out_i in out]
        expected[layer] = np.stack([np.linalg.svd(j, compute_uv=False) for j in jacobians])
        u = out
    singular_values = jax.jit(diagnostics.layer_jacobian_singular_values, static_argnums=(2, 3))
    got = singular_values(state, batch["image"], ("DenseBN_0", "DenseBN_1"), None)
    first_two = singular_values(state, batch["image"], ("DenseBN_1",), 2)
    for layer, values in expected.items():
        assert got[layer].shape == values.shape
        np.testing.assert_allclose(got[layer], values, rtol=2e-4, atol=1e-6)
    np.testing.assert_allclose(first_two["DenseBN_1"], expected["DenseBN_1"][:2], rtol=2e-4, atol=1e-6)
    with pytest.raises(ValueError, match=r"no module at \['DenseBN_9'\]"):
        diagnostics.layer_jacobian_singular_values(state, batch["image"], ["DenseBN_9"])


def test_measure_records_every_quantity_per_layer():
    state, batch = _small_net("bn")
    layers = ["DenseBN_0", "DenseBN_1", "Dense_0"]
    record = jax.jit(lambda s, b: diagnostics.measure(s, b, layers, (1.0, 2.0)))(state, batch)
    lr = float(current_learning_rate(state.opt_state))
    ics = jax.jit(functools.partial(diagnostics.internal_covariate_shift, layer_order=layers, learning_rate=lr))
    ics = ics(state, batch)
    norms = jax.jit(diagnostics.layer_gradient_norms)(state, batch)
    landscape = jax.jit(diagnostics.loss_landscape)(state, batch, np.array([lr, 2 * lr]))
    for layer in layers:
        np.testing.assert_allclose(record[f"ics_l2/{layer}"], ics[layer]["l2"], rtol=1e-4, atol=1e-7)
        np.testing.assert_allclose(record[f"ics_cosine/{layer}"], ics[layer]["cosine"], rtol=1e-4)
        kernel_owner = layer if layer == "Dense_0" else f"{layer}/Dense_0"
        np.testing.assert_allclose(record[f"grad_norm/{layer}"], norms[kernel_owner], rtol=1e-4)
    assert float(record["ics_l2/DenseBN_0"]) == 0.0  # nothing before the first layer moves
    assert record["jacobian_sv/DenseBN_1"].shape == (4,) and record["jacobian_sv/Dense_0"].shape == (4,)
    np.testing.assert_allclose(record["landscape/beta_smoothness"], landscape["beta_smoothness"], rtol=1e-4)
    assert record["learning_rate"] == pytest.approx(lr)


def _run_config(data_dir: Path, **overrides):
    config = mnist_mlp.get_config("bn")
    config.model.hidden = (32, 32, 32)
    config.update({
        "num_steps": 40, "eval_every": 20, "checkpoint_every": 20, "steps_per_dispatch": 20, "population_batches": 5,
        "data_dir": str(data_dir), "diagnostics_every": 10, **overrides,
    })  # fmt: skip
    return config


def _diagnostics_records(workdir: Path) -> list[dict]:
    return [json.loads(line) for line in (workdir / DIAGNOSTICS_FILE).read_text().splitlines()]


@pytest.fixture(scope="module")
def diagnosed_run(module_fake_mnist: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, TrainState]:
    """`_run_config`'s run, trained once for the tests that only read it: its directory and final state."""
    workdir = tmp_path_factory.mktemp("diagnosed") / "run"
    return workdir, train_and_evaluate(_run_config(module_fake_mnist), workdir)


def test_training_records_diagnostics_on_the_latest_mini_batch_without_changing_training(
    module_fake_mnist: Path, diagnosed_run: tuple[Path, TrainState], tmp_path: Path
) -> None:
    config = _run_config(module_fake_mnist)
    workdir, state = diagnosed_run
    records = _diagnostics_records(workdir)
    assert [r["step"] for r in records] == [10, 20, 30, 40]
    assert len(records[-1]["jacobian_sv/DenseBN_2"]) == 32 and len(records[-1]["landscape/losses"]) == 4

    # The record at step 40 is `measure` on the state after step 40 and the mini-batch step 40 trained on.
    split = bnrepro.data.load_dataset("mnist", "offline", data_dir=str(module_fake_mnist), validation_size=0).train
    permutation = epoch_permutation(state.rng, state.epoch, len(split.labels))
    dataset = Dataset.create(split.images, split.labels)
    images, labels = dataset.take(permutation[(int(state.batch_index) - 1) * 60 : int(state.batch_index) * 60])
    batch = {"image": preprocess(images), "label": labels}
    layers, scales = config.diagnostics_layers, config.diagnostics_step_scales  # one compiled program, not op by op
    expected = jax.jit(lambda s, b: diagnostics.measure(s, b, layers, scales))(state, batch)
    for key in ("ics_l2/DenseBN_2", "grad_norm/DenseBN_1", "jacobian_sv_mean/DenseBN_0", "landscape/loss"):
        assert records[-1][key] == pytest.approx(float(expected[key]), rel=1e-4), key

    config.diagnostics_every = 0  # off: no file, and the same training
    plain = train_and_evaluate(config, tmp_path / "off")
    assert not (tmp_path / "off" / DIAGNOSTICS_FILE).exists()
    jax.tree.map(np.testing.assert_array_equal, plain.params, state.params)


def test_resumed_diagnostics_equal_uninterrupted_ones(
    module_fake_mnist: Path, diagnosed_run: tuple[Path, TrainState], tmp_path: Path
) -> None:
    train_and_evaluate(_run_config(module_fake_mnist, num_steps=20), tmp_path / "split")
    with (tmp_path / "split" / DIAGNOSTICS_FILE).open("a") as f:  # what a run killed after step 20 wrote
        f.write(json.dumps({"step": 30, "landscape/loss": -1.0}) + "\n")
    train_and_evaluate(_run_config(module_fake_mnist), tmp_path / "split")
    assert _diagnostics_records(tmp_path / "split") == _diagnostics_records(diagnosed_run[0])


def test_diagnostics_of_a_group_are_each_models_own(module_fake_mnist: Path, tmp_path: Path) -> None:
    configs = [_run_config(module_fake_mnist, num_steps=20, seed=seed) for seed in (0, 1)]
    train_group(configs, [tmp_path / "g0", tmp_path / "g1"])
    train_and_evaluate(configs[1], tmp_path / "alone")
    for together, alone in zip(_diagnostics_records(tmp_path / "g1"), _diagnostics_records(tmp_path / "alone")):
        for key in ("ics_l2/DenseBN_1", "landscape/beta_smoothness", "jacobian_sv_max/DenseBN_2"):
            assert together[key] == pytest.approx(alone[key], rel=1e-3, abs=1e-6), key
    assert _diagnostics_records(tmp_path / "g0")[0]["landscape/loss"] != _diagnostics_records(tmp_path / "g1")[0][
        "landscape/loss"]  # fmt: skip


def test_a_missing_diagnostics_layer_stops_the_run_before_training(module_fake_mnist: Path, tmp_path: Path) -> None:
    config = _run_config(module_fake_mnist, diagnostics_layers=("DenseBN_0", "DenseBN_5"))
    with pytest.raises(ValueError, match=r"config\.diagnostics_layers = .*no kernel at \['DenseBN_5'\]"):
        train_and_evaluate(config, tmp_path / "bad")
    assert not (tmp_path / "bad" / METRICS_FILE).exists()


def test_ics_configs_and_their_sweep_are_valid_and_differ_only_as_named() -> None:
    from config_files import CONFIGS, mnist_ics

    from bnrepro import config_schema, sweep

    configs = {(a, n): mnist_ics.get_config(f"{a},{n}") for a in mnist_ics.ACTIVATIONS for n in mnist_ics.NORMS}
    for (activation, norm), config in configs.items():
        config_schema.validate(config)
        assert config.model.activation == activation and config.diagnostics_every == 250
        assert config.model.batch_norm == (norm != "none")
        assert (config.model.bn.noise_shift, config.model.bn.noise_scale) == (
            (mnist_ics.NOISE_SHIFT, mnist_ics.NOISE_SCALE) if norm == "noisy_bn" else (0.0, 1.0)
        )
    with pytest.raises(ValueError, match=r"configs/mnist_ics.py: bad argument 'tanh,bn'"):
        mnist_ics.get_config("tanh,bn")
    for arg, count in (("", 18), ("quick", 6)):
        spec = sweep.load_sweep(f"{CONFIGS / 'sweeps' / 'mnist_ics.py'}:{arg}")
        assert len(spec.points) == count
        for point in spec.points:
            config = sweep.point_config(spec.base, point)
            config_schema.validate(config)
            norm = "none" if not config.model.batch_norm else "noisy_bn" if config.model.bn.noise_scale > 1 else "bn"
            expected = configs[(config.model.activation, norm)]
            assert config.model.to_dict() == expected.model.to_dict()
