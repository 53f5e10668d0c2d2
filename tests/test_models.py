"""`bnrepro.models.create_model` and `config.model.bn`: one set of BatchNorm options, bound once, reaching every BN
layer of every model, with one default each; the variable names of earlier runs kept; the old flat `model.bn_*`
keys refused with their new names."""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from config_files import fashion_table2, imagenet, load_config_file, mnist_mlp

from bnrepro import batchnorm, config_schema, layers, models, sweep

seq_mnist = load_config_file("seq_mnist")

# Each model's config with BN on: the Figure 1 MLP, the scaled BN-Inception (cut after module 3c), the BN-LSTM.
CONFIGS = {
    "mlp": lambda: mnist_mlp.get_config("bn"),
    "bn_inception": lambda: fashion_table2.get_config("bn_x5,quick"),
    "lstm": lambda: seq_mnist.get_config("bn_lstm,rows"),
}
# A value for every option, none of them its default.
OPTIONS = {
    "momentum": 0.75,
    "eps": 3e-3,
    "unbiased_running_var": False,
    "axis_name": "replicas",
    "virtual_batch_size": 2,
    "device_group_size": 2,
    "backward": "autodiff",
    "renorm": True,
    "noise_shift": 0.25,
    "noise_scale": 1.5,
}


def _batch_norms(model: nn.Module) -> list[layers.BatchNorm]:
    """Every `layers.BatchNorm` that `model.init` calls on four 28x28 images (traced abstractly)."""
    found = []

    def record(next_fun, args, kwargs, context):
        if isinstance(context.module, layers.BatchNorm) and context.method_name == "__call__":
            found.append(context.module)
        return next_fun(*args, **kwargs)

    with nn.intercept_methods(record):
        jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((4, 28, 28)), train=False))
    return found


def _variable_names(model: nn.Module) -> set[str]:
    """The paths of `model`'s parameters and statistics, e.g. "params/Dense_0/kernel"."""
    variables = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((4, 28, 28)), train=False))
    stored = {collection: variables[collection] for collection in ("params", "batch_stats")}
    return {"/".join(k.key for k in path) for path, _ in jax.tree_util.tree_flatten_with_path(stored)[0]}


@pytest.mark.parametrize("name", CONFIGS)
def test_every_bn_option_in_the_config_reaches_every_batch_norm(name: str) -> None:
    assert set(OPTIONS) == set(models.BN_OPTIONS) == set(models.bn_config())
    config = CONFIGS[name]()
    assert config.model.name == name and config.model.batch_norm
    config.model.bn.update(OPTIONS)
    config_schema.validate(config)
    found = _batch_norms(models.create_model(config.model))
    assert len(found) >= 3
    for layer in found:
        assert {option: getattr(layer, option) for option in OPTIONS} == OPTIONS


def test_one_default_per_option_the_same_in_every_model_and_config() -> None:
    defaults = {f.name: f.default for f in dataclasses.fields(layers.BatchNorm)}
    assert models.bn_config().to_dict() == {option: defaults[option] for option in models.BN_OPTIONS}
    assert defaults["eps"] == batchnorm.DEFAULT_EPS
    for cls in models.MODELS.values():  # no model keeps a BN option of its own
        assert not [f.name for f in dataclasses.fields(cls) if f.name.startswith("bn_")], cls
    configs = [make() for make in CONFIGS.values()] + [imagenet[run].get_config() for run in imagenet]
    assert {config.model.bn.eps for config in configs} == {batchnorm.DEFAULT_EPS}
    for make in CONFIGS.values():
        assert {layer.eps for layer in _batch_norms(models.create_model(make().model))} == {batchnorm.DEFAULT_EPS}


def test_models_from_equal_configs_are_equal() -> None:
    """Flax modules compare as dataclasses, and jit compares a state's static `apply_fn`: the bound BatchNorm must
    not make two models of one config differ."""
    one, two = (models.create_model(mnist_mlp.get_config("bn").model) for _ in range(2))
    assert one == two and hash(one) == hash(two)
    config = mnist_mlp.get_config("bn")
    config.model.bn.eps = 1e-3
    assert models.create_model(config.model) != one


def test_variable_names_are_those_of_earlier_runs() -> None:
    """Checkpoints of runs made when each model bound its own BN options hold these names."""
    mlp = _variable_names(models.create_model(mnist_mlp.get_config("bn").model))
    hidden = [f"DenseBN_{i}" for i in range(3)]
    assert mlp == (
        {f"batch_stats/{layer}/BatchNorm_0/{s}" for layer in hidden for s in ("mean", "var")}
        | {f"params/{layer}/BatchNorm_0/{p}" for layer in hidden for p in ("scale", "bias")}
        | {f"params/{layer}/Dense_0/kernel" for layer in hidden}
        | {"params/Dense_0/kernel", "params/Dense_0/bias"}
    )
    lstm = _variable_names(models.create_model(seq_mnist.get_config("bn_lstm,rows").model))
    bn = ("bn_hidden", "bn_input", "bn_cell")
    assert lstm == (
        {f"batch_stats/lstm/{layer}/{s}" for layer in bn for s in ("mean", "var")}
        | {f"params/lstm/{layer}/scale" for layer in bn}
        | {"params/lstm/bn_cell/bias", "params/lstm/bias", "params/lstm/hidden/kernel", "params/lstm/input/kernel"}
        | {"params/classifier/kernel", "params/classifier/bias"}
    )
    inception = _variable_names(models.create_model(fashion_table2.get_config("bn_x5,quick").model))
    assert {"batch_stats/conv1_7x7/BatchNorm_0/mean", "params/inception_3c/3x3/BatchNorm_0/scale"} <= inception


def _with_model_key(config: ml_collections.ConfigDict, key: str, value) -> ml_collections.ConfigDict:
    """A copy of `config` with `config.model[key] = value`, bypassing ConfigDict's own checks."""
    tree = config.to_dict()
    tree["model"][key] = value
    return ml_collections.ConfigDict(tree)


@pytest.mark.parametrize(
    ("make", "key", "value", "new"),
    [(CONFIGS["mlp"], "bn_momentum", 0.9, "bn.momentum"),
     (CONFIGS["bn_inception"], "bn_virtual_batch_size", 32, "bn.virtual_batch_size"),
     (CONFIGS["lstm"], "bn_eps", 1e-3, "bn.eps"),
     (CONFIGS["lstm"], "bn_gamma_init", 0.1, "gamma_init")],
)  # fmt: skip
def test_an_old_bn_key_in_a_config_names_its_new_key(make, key: str, value, new: str) -> None:
    with pytest.raises(ValueError, match=rf"^config\.model\.{key}: renamed to config\.model\.{new}\.$"):
        config_schema.validate(_with_model_key(make(), key, value))


def test_an_old_bn_key_in_a_sweep_point_names_its_new_key() -> None:
    base = mnist_mlp.get_config("bn")
    with pytest.raises(ValueError, match=r"config\.model\.bn_backward: renamed to config\.model\.bn\.backward"):
        sweep.point_config(base, {"model.bn_backward": "autodiff"})
    assert sweep.point_config(base, {"model.bn.backward": "autodiff"}).model.bn.backward == "autodiff"


def _with_bn(config: ml_collections.ConfigDict, **options) -> ml_collections.ConfigDict:
    """A copy of `config` with `options` in `model.bn` (a value of None deletes the option)."""
    tree = config.to_dict()
    for option, value in options.items():
        if value is None:
            del tree["model"]["bn"][option]
        else:
            tree["model"]["bn"][option] = value
    return ml_collections.ConfigDict(tree)


@pytest.mark.parametrize(
    ("options", "message"),
    [({"momentum": 1.5}, r"config\.model\.bn\.momentum = 1\.5: must lie in \[0, 1\]"),
     ({"eps": 0.0}, r"config\.model\.bn\.eps = 0\.0: must be a positive finite number"),
     ({"backward": "jvp"}, r"config\.model\.bn\.backward = 'jvp': expected one of \['paper', 'autodiff'\]"),
     ({"virtual_batch_size": 0}, r"config\.model\.bn\.virtual_batch_size = 0: must be >= 1 or None"),
     ({"noise_scale": 0.5}, r"config\.model\.bn\.noise_scale = 0\.5: must be >= 1"),
     ({"renorm": 1}, r"config\.model\.bn\.renorm: expected bool, got int 1"),
     ({"axis_name": 3}, r"config\.model\.bn\.axis_name: expected str or NoneType, got int 3"),
     ({"ghost": 4}, r"config\.model\.bn\.ghost: unknown key; the known keys are \['axis_name', "),
     ({"eps": None}, r"config\.model\.bn\.eps: missing")],
)  # fmt: skip
def test_bad_bn_options_name_the_key(options: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        config_schema.validate(_with_bn(mnist_mlp.get_config("bn"), **options))


def test_a_config_without_bn_options_is_refused() -> None:
    tree = mnist_mlp.get_config("bn").to_dict()
    del tree["model"]["bn"]
    with pytest.raises(ValueError, match=r"config\.model\.bn: missing"):
        config_schema.validate(ml_collections.ConfigDict(tree))


@pytest.mark.parametrize("variant", ["bn", "baseline"])
def test_mlp_dropout_draws_in_training_only_and_is_off_at_rate_0(variant: str) -> None:
    """`model.dropout_rate`: no variable of its own; at 0 the training network draws nothing (the Figure 1 net
    unchanged); at 0.5 it differs with the key, and the inference network is the one without dropout."""
    config = mnist_mlp.get_config(variant)
    plain = models.create_model(config.model)
    config.model.dropout_rate = 0.5
    dropped = models.create_model(config.model)
    images = jax.random.uniform(jax.random.key(0), (8, 28, 28))
    variables = plain.init(jax.random.key(1), images, train=False)
    same = dropped.init(jax.random.key(1), images, train=False)
    jax.tree.map(np.testing.assert_array_equal, same, variables)

    def training(model: nn.Module, **rngs) -> jax.Array:
        return model.apply(variables, images, train=True, mutable=["batch_stats"], rngs=rngs)[0]

    without = training(plain)  # no dropout key needed
    np.testing.assert_array_equal(training(plain, dropout=jax.random.key(2)), without)
    first, second = training(dropped, dropout=jax.random.key(2)), training(dropped, dropout=jax.random.key(3))
    assert not np.allclose(first, without) and not np.allclose(first, second)
    np.testing.assert_array_equal(
        dropped.apply(variables, images, train=False), plain.apply(variables, images, train=False)
    )
