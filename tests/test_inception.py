"""BN-Inception against the appendix's Figure 5 table, written out again here as data: output
shapes after every row, parameter counts computed by hand from the table, the placement of BN
(bias dropped), the switches, and LRN against its formula in NumPy.

Shapes and counts come from `jax.eval_shape` (nothing is computed). Real forward passes use
variables filled in NumPy on the abstract tree: a compiled `init` of this 70-convolution net
costs 10-20 s of CPU, far more than the passes themselves.
"""

import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from bnrepro.layers import BatchNorm, population_statistics
from bnrepro.models import inception
from bnrepro.models.inception import STAGE_OUTPUTS, STAGES, BNInception, local_response_normalization

# Figure 5 as printed: output grid at 224x224, #1x1, #3x3 reduce, #3x3, double #3x3 reduce,
# double #3x3, pool proj (0: pass-through), printed output channels. Grids of 3c and 4e corrected
# (erratum: the stride-2 modules halve the grid).
TABLE = {
    "3a": (28, 64, 64, 64, 64, 96, 32, 256),
    "3b": (28, 64, 64, 96, 64, 96, 64, 320),
    "3c": (14, 0, 128, 160, 64, 96, 0, 576),
    "4a": (14, 224, 64, 96, 96, 128, 128, 576),
    "4b": (14, 192, 96, 128, 96, 128, 128, 576),
    "4c": (14, 160, 128, 160, 128, 160, 128, 576),
    "4d": (14, 96, 128, 192, 160, 192, 128, 576),
    "4e": (7, 0, 128, 192, 192, 256, 0, 1024),
    "5a": (7, 352, 192, 320, 160, 224, 128, 1024),
    "5b": (7, 352, 192, 320, 192, 224, 128, 1024),
}
STEM = {"conv1": (112, 64), "pool1": (56, 64), "conv2": (56, 192), "pool2": (28, 192)}
# The literal table's channels where they differ from the printed ones (erratum: 4c/4d sum to 608).
LITERAL_CHANNELS = {"4c": 608, "4d": 608, "4e": 1056}


def _table(pool_proj_4cd):
    rows = dict(TABLE)
    if pool_proj_4cd == "tfslim":
        for name in ("4c", "4d"):
            rows[name] = rows[name][:6] + (96,) + rows[name][7:]
    return rows


def _count_from_table(
    pool_proj_4cd="literal", batch_norm=True, separable_stem=True, num_classes=1000, in_channels=3, width=1.0
):
    """Parameters of the table's network, by hand: conv kernels, and per convolution either BN's
    gamma and beta or (without BN) a bias; the classifier's weights and biases."""

    def w(d):
        return max(int(d * width), 1)

    def conv(k, cin, cout):
        return k * k * cin * cout + (2 * cout if batch_norm else cout)

    c64 = w(64)
    if separable_stem:
        mult = max(min(8, c64 // in_channels), 1)
        total = 7 * 7 * in_channels * mult + conv(1, in_channels * mult, c64)  # depthwise: no bias, no BN
    else:
        total = conv(7, in_channels, c64)
    total += conv(1, c64, w(64)) + conv(3, w(64), w(192))
    cin = w(192)
    for _, n1, r3, n3, rd, nd, proj, _ in _table(pool_proj_4cd).values():
        total += conv(1, cin, w(r3)) + conv(3, w(r3), w(n3))
        total += conv(1, cin, w(rd)) + conv(3, w(rd), w(nd)) + conv(3, w(nd), w(nd))
        cout = w(n3) + w(nd)
        if n1:
            total += conv(1, cin, w(n1))
            cout += w(n1)
        if proj:
            total += conv(1, cin, w(proj))
            cout += w(proj)
        else:
            cout += cin  # the pooled input passes through
        cin = cout
    return total + cin * num_classes + num_classes


def _abstract_variables(model, shape):
    x = jax.ShapeDtypeStruct(shape, jnp.float32)
    return jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), x)


def _size(tree):
    return sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(tree))


def _variables(model, shape, seed=0):
    """Variables of `model` for inputs of `shape`, without its (slow to compile) init: He-normal
    kernels, gamma and the running variances near 1, biases and running means near 0."""
    rng = np.random.default_rng(seed)

    def fill(path, leaf):
        name = path[-1].key
        if name == "kernel":
            fan_in = math.prod(leaf.shape[:-1])
            return jnp.asarray(rng.normal(0.0, math.sqrt(2.0 / fan_in), leaf.shape), jnp.float32)
        if name in ("scale", "var"):
            return jnp.asarray(rng.uniform(0.8, 1.2, leaf.shape), jnp.float32)
        return jnp.asarray(rng.normal(0.0, 0.1, leaf.shape), jnp.float32)

    abstract = _abstract_variables(model, shape)
    return jax.tree_util.tree_map_with_path(fill, {k: v for k, v in abstract.items() if k != STAGE_OUTPUTS})


def _images(shape, seed=1):
    return jnp.asarray(np.random.default_rng(seed).normal(size=shape), jnp.float32)


@functools.partial(jax.jit, static_argnames=("model", "train"))
def _logits(model, variables, images, train=False, dropout_key=None):
    """Jitted `model.apply` (compiled once per model and shape across the tests), logits only."""
    if not train:
        return model.apply(variables, images, train=False)
    rngs = None if dropout_key is None else {"dropout": dropout_key}
    return model.apply(variables, images, train=True, mutable=["batch_stats"], rngs=rngs)[0]


def _calls(model, shape, train, module_type):
    """(module, input shape) of each call `model.apply` makes to a `module_type`, traced abstractly."""
    calls = []

    def record(next_fun, args, kwargs, context):
        if isinstance(context.module, module_type) and context.method_name == "__call__":
            calls.append((context.module, args[0].shape))
        return next_fun(*args, **kwargs)

    variables = _variables(model, shape)
    x = jax.ShapeDtypeStruct(shape, jnp.float32)
    with nn.intercept_methods(record):
        jax.eval_shape(
            lambda v, x: model.apply(v, x, train=train, mutable=["batch_stats"], rngs={"dropout": jax.random.key(0)}),
            variables,
            x,
        )
    return calls


SMALL = {"small_input": True, "width_multiplier": 0.25, "num_classes": 10}
SMALL_SHAPE = (4, 32, 32, 3)


@pytest.mark.parametrize("pool_proj_4cd", ["literal", "tfslim"])
def test_imagenet_stage_shapes_match_the_table(pool_proj_4cd):
    model = BNInception(pool_proj_4cd=pool_proj_4cd)
    variables = _abstract_variables(model, (2, 224, 224, 3))
    stages = {name: value[0].shape for name, value in variables[STAGE_OUTPUTS].items()}
    expected = {name: (2, grid, grid, channels) for name, (grid, channels) in STEM.items()}
    for name, row in TABLE.items():
        channels = row[-1] if pool_proj_4cd == "tfslim" else LITERAL_CHANNELS.get(name, row[-1])
        expected[name] = (2, row[0], row[0], channels)
    expected["avg_pool"] = (2, 1, 1, 1024)
    expected["logits"] = (2, 1000)
    assert stages == expected
    assert set(STAGES) == set(expected)


@pytest.mark.parametrize("separable_stem", [True, False])
@pytest.mark.parametrize("pool_proj_4cd", ["literal", "tfslim"])
def test_parameter_count_equals_the_tables(pool_proj_4cd, separable_stem):
    model = BNInception(pool_proj_4cd=pool_proj_4cd, separable_stem=separable_stem)
    count = _size(_abstract_variables(model, (1, 224, 224, 3))["params"])
    assert count == _count_from_table(pool_proj_4cd, separable_stem=separable_stem)
    # paper.md: ~11.3M literally (the Caffe/PyTorch ports), ~11.2M with TF-slim's projections.
    assert round(count / 1e6, 1) == {"literal": 11.3, "tfslim": 11.2}[pool_proj_4cd]


@pytest.mark.parametrize(
    "kwargs, shape",
    [
        ({"batch_norm": False}, (1, 224, 224, 3)),
        (SMALL, (1, 32, 32, 3)),
        ({**SMALL, "batch_norm": False}, (1, 32, 32, 3)),
        ({**SMALL, "width_multiplier": 0.5}, (1, 28, 28, 1)),
    ],
)
def test_parameter_count_of_variants_equals_the_tables(kwargs, shape):
    model = BNInception(**kwargs)
    count = _size(_abstract_variables(model, shape)["params"])
    expected = _count_from_table(
        batch_norm=kwargs.get("batch_norm", True),
        num_classes=kwargs.get("num_classes", 1000),
        in_channels=shape[-1],
        width=kwargs.get("width_multiplier", 1.0),
    )
    assert count == expected


@pytest.mark.parametrize("batch_norm", [True, False])
def test_conv_biases_are_dropped_with_bn_and_kept_without(batch_norm):
    variables = _abstract_variables(BNInception(batch_norm=batch_norm), (1, 224, 224, 3))
    params = traverse_util.flatten_dict(variables["params"])
    convs = {path[:-1] for path in params if path[-1] == "kernel" and path[-2] != "classifier"}
    batch_norms = {path[:-1] for path in params if path[-2].startswith("BatchNorm")}
    depthwise = {path for path in convs if path[-1] == "depthwise"}
    assert len(convs) == 2 + 2 + 8 * 7 + 2 * 5  # stem (separable conv1: 2), four-branch modules, stride-2 modules
    assert len(depthwise) == 1
    has_bias = {path for path in convs if path + ("bias",) in params}
    if batch_norm:
        assert not has_bias
        # One BN per convolution of the table (the depthwise half of the stem is not one).
        assert len(batch_norms) == len(convs) - 1
        assert _size(variables["batch_stats"]) == sum(math.prod(params[p + ("scale",)].shape) for p in batch_norms) * 2
    else:
        assert has_bias == convs - depthwise
        assert not batch_norms and "batch_stats" not in variables
    assert ("classifier", "bias") in params


def test_small_input_shapes():
    for size, grids in [(32, (32, 16, 8, 4)), (28, (28, 14, 7, 4))]:
        variables = _abstract_variables(BNInception(**SMALL), (2, size, size, 1))
        stages = {name: value[0].shape for name, value in variables[STAGE_OUTPUTS].items()}
        assert "pool1" not in stages
        assert stages["conv1"][1:3] == (grids[0],) * 2 and stages["conv2"][1:3] == (grids[0],) * 2
        assert stages["3b"][1:3] == (grids[1],) * 2
        assert stages["4d"][1:3] == (grids[2],) * 2
        assert stages["5b"] == (2, grids[3], grids[3], 256)  # 1024 / 4
        assert stages["logits"] == (2, 10)


def test_num_modules_keeps_the_first_rows_of_the_table():
    variables = _abstract_variables(BNInception(**SMALL, num_modules=3), (2, 32, 32, 3))
    assert sorted(k for k in variables["params"] if k.startswith("inception_")) == [
        "inception_3a", "inception_3b", "inception_3c",
    ]  # fmt: skip
    assert set(variables[STAGE_OUTPUTS]) == {"conv1", "conv2", "pool2", "3a", "3b", "3c", "avg_pool", "logits"}
    channels_3c = TABLE["3c"][-1] // 4  # width x0.25
    assert variables["params"]["classifier"]["kernel"].shape == (channels_3c, 10)
    for wrong in (0, 11):
        with pytest.raises(ValueError, match=rf"num_modules must lie in \[1, 10\], got {wrong}"):
            _abstract_variables(BNInception(**SMALL, num_modules=wrong), (2, 32, 32, 3))


def test_stem_depthwise_multiplier_is_capped_by_the_pointwise_width():
    for kwargs, shape, depthwise in [
        ({}, (1, 224, 224, 3), (7, 7, 1, 24)),  # the paper's multiplier 8
        (SMALL, (1, 32, 32, 3), (7, 7, 1, 15)),  # 16 // 3 = 5 maps per channel
        (SMALL, (1, 28, 28, 1), (7, 7, 1, 8)),
    ]:
        params = _abstract_variables(BNInception(**kwargs), shape)["params"]
        assert params["conv1_7x7"]["depthwise"]["kernel"].shape == depthwise
    plain = _abstract_variables(BNInception(separable_stem=False), (1, 224, 224, 3))["params"]
    assert plain["conv1_7x7"]["Conv_0"]["kernel"].shape == (7, 7, 3, 64)


def test_batch_of_one_in_inference_mode():
    model = BNInception(**SMALL)
    variables = _variables(model, (1, 32, 32, 3))
    images = _images(SMALL_SHAPE)
    one = _logits(model, variables, images[:1])
    assert one.shape == (1, 10) and bool(jnp.all(jnp.isfinite(one)))
    # Inference uses the stored moments: an example's logits do not depend on the rest of its batch.
    np.testing.assert_allclose(_logits(model, variables, images)[:1], one, rtol=1e-4, atol=1e-4)


def test_imagenet_size_inference_is_per_example():
    """At 224x224 (the parameters, made at 32x32, do not depend on the input size) the inference network maps
    each example on its own (Algorithm 2's output depends on the input only): an image's logits stay the same
    when the other image of its batch changes, and different images get different logits."""
    model = BNInception()
    variables = _variables(model, (1, 32, 32, 3))
    images = _images((2, 224, 224, 3))
    logits = _logits(model, variables, images)
    assert logits.shape == (2, 1000) and bool(jnp.all(jnp.isfinite(logits)))
    other = images.at[1].set(3.0 * images[1] + 1.0)  # another companion for image 0
    np.testing.assert_allclose(_logits(model, variables, other)[0], logits[0], rtol=1e-4, atol=1e-4)
    assert float(jnp.max(jnp.abs(logits[0] - logits[1]))) > 1e-2 * float(jnp.max(jnp.abs(logits)))


def test_algorithm_2_population_statistics_of_the_model():
    model = BNInception(**SMALL)
    variables = _variables(model, SMALL_SHAPE)
    batches = _images((2,) + SMALL_SHAPE)
    population = jax.jit(functools.partial(population_statistics, model))(variables, batches)
    assert jax.tree.structure(population) == jax.tree.structure(variables["batch_stats"])
    flat = traverse_util.flatten_dict(population)
    assert all(bool(jnp.all(jnp.isfinite(v))) for v in flat.values())
    assert all(bool(jnp.all(v > 0)) for path, v in flat.items() if path[-1] == "var")
    # The first BN sees the stem's pointwise output over 2 batches x 4 images x 32 x 32 locations.
    stem = variables["params"]["conv1_7x7"]
    u = jax.lax.conv_general_dilated(
        batches.reshape((-1, 32, 32, 3)),
        stem["depthwise"]["kernel"],
        (1, 1),
        "SAME",
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
        feature_group_count=3,
    )
    u = u @ stem["pointwise"]["kernel"][0, 0]
    np.testing.assert_allclose(flat[("conv1_7x7", "BatchNorm_0", "mean")], u.mean(axis=(0, 1, 2)), rtol=1e-4, atol=1e-4)


def test_bn_settings_reach_every_batch_norm():
    settings = {"momentum": 0.9, "eps": 1e-3, "virtual_batch_size": 2, "backward": "autodiff"}
    model = BNInception(**SMALL, norm=functools.partial(BatchNorm, **settings))
    layers = _calls(model, SMALL_SHAPE, True, BatchNorm)
    assert len(layers) == 2 + 2 + 8 * 7 + 2 * 5 - 1  # every convolution's but the stem's depthwise half
    assert all({k: getattr(layer, k) for k in settings} == settings for layer, _ in layers)
    with pytest.raises(ValueError, match="virtual_batch_size"):  # and they act: 3 does not divide 4
        _calls(model.clone(norm=functools.partial(BatchNorm, virtual_batch_size=3)), SMALL_SHAPE, True, BatchNorm)


def test_sigmoid_lrn_and_dropout_switches():
    x = _images(SMALL_SHAPE)
    base = BNInception(**SMALL)
    variables = _variables(base, SMALL_SHAPE)
    sigmoid, lrn, dropout = (base.clone(activation="sigmoid"), base.clone(lrn=True), base.clone(dropout_rate=0.5))
    for model in (sigmoid, lrn, dropout):  # none of the switches adds or removes parameters
        assert jax.tree.structure(_variables(model, SMALL_SHAPE)) == jax.tree.structure(variables)

    # The switches act, on the net cut after module 3a (the stem, where LRN sits, one module of the sigmoids, the
    # dropout before the classifier): each compile of the whole net costs seconds and shows no more.
    cut = {model: model.clone(num_modules=1) for model in (base, sigmoid, lrn, dropout)}
    cut_variables = _variables(cut[base], SMALL_SHAPE)
    reference = _logits(cut[base], cut_variables, x)
    assert not np.allclose(_logits(cut[sigmoid], cut_variables, x), reference, atol=1e-3)
    assert not np.allclose(_logits(cut[lrn], cut_variables, x), reference, atol=1e-3)

    # Dropout: one layer, before the classifier, active only in training, where it needs a `dropout` rng.
    for train in (True, False):  # its input: the globally pooled 5b features (1024 / 4 channels)
        calls = [(d.rate, d.deterministic, shape) for d, shape in _calls(dropout, SMALL_SHAPE, train, nn.Dropout)]
        assert calls == [(0.5, not train, (4, 256))]
    assert not _calls(base, SMALL_SHAPE, True, nn.Dropout)
    with pytest.raises(Exception, match="dropout"):
        jax.eval_shape(lambda v: dropout.apply(v, x, train=True, mutable=["batch_stats"]), variables)
    dropped = [_logits(cut[dropout], cut_variables, x, train=True, dropout_key=jax.random.key(seed)) for seed in (0, 1)]
    assert not np.allclose(dropped[0], dropped[1], atol=1e-3)


def _lrn_numpy(x, depth_radius, bias, alpha, beta):
    out = np.empty_like(x)
    channels = x.shape[-1]
    for c in range(channels):
        window = x[..., max(0, c - depth_radius) : min(channels, c + depth_radius + 1)]
        out[..., c] = x[..., c] / (bias + alpha * np.sum(window**2, axis=-1)) ** beta
    return out


def test_local_response_normalization_matches_the_formula():
    x = np.random.default_rng(3).normal(0.0, 20.0, (2, 3, 3, 9)).astype(np.float32)
    # Defaults: GoogLeNet's Caffe LRN, local_size 5, alpha 1e-4 (divided by local_size), beta 0.75, k 1.
    np.testing.assert_allclose(local_response_normalization(x), _lrn_numpy(x, 2, 1.0, 1e-4 / 5, 0.75), rtol=1e-5)
    y = local_response_normalization(x, depth_radius=3, bias=2.0, alpha=0.01, beta=0.5)
    np.testing.assert_allclose(y, _lrn_numpy(x, 3, 2.0, 0.01, 0.5), rtol=1e-5)
    assert not np.allclose(y, x, rtol=0.1)


def test_unknown_errata_option_is_an_error():
    with pytest.raises(ValueError, match="pool_proj_4cd"):
        _abstract_variables(BNInception(pool_proj_4cd="printed"), (1, 224, 224, 3))


@pytest.mark.parametrize("shape, strides", [((2, 9, 9, 3), (2, 2)), ((2, 8, 7, 4), (2, 2)), ((2, 7, 7, 3), (1, 1))])
def test_max_pool_and_its_gradient_equal_flax_max_pool_under_autodiff(shape, strides):
    """`max_pool`'s own gradient (no select-and-scatter) against autodiff of `flax.linen.max_pool`, 3x3 SAME,
    on inputs without ties (where the two could pick different maxima), odd and even sizes."""
    x = jnp.asarray(np.random.default_rng(0).permutation(math.prod(shape)).reshape(shape), jnp.float32)
    head = jnp.asarray(np.random.default_rng(1).normal(size=(shape[0], -(-shape[1] // strides[0]),
                                                              -(-shape[2] // strides[1]), shape[3])), jnp.float32)  # fmt: skip

    def ours(x):
        return jnp.sum(inception.max_pool(x, (3, 3), strides) * head)

    def flax(x):
        return jnp.sum(nn.max_pool(x, (3, 3), strides=strides, padding="SAME") * head)

    @jax.jit  # one program for all of it (op by op, each primitive compiled on its own: most of the test's time)
    def compute(x):
        pooled = inception.max_pool(x, (3, 3), strides), nn.max_pool(x, (3, 3), strides, "SAME")
        batched = jax.vmap(jax.grad(ours))(jnp.stack([x, -x]))  # as a sweep's vmapped group differentiates it
        return pooled, (jax.grad(ours)(x), jax.grad(flax)(x)), (batched[1], jax.grad(flax)(-x))

    pooled, grads, batched = compute(x)
    np.testing.assert_array_equal(*pooled)
    np.testing.assert_allclose(*grads, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(*batched, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("batch_norm", [False, True])
def test_separable_stem_equals_a_grouped_then_a_pointwise_convolution_and_its_gradients(batch_norm):
    """The stem's `SeparableConvBN` (one convolution with the product kernel P D) against Flax's grouped
    `nn.Conv(feature_group_count=channels)` followed by a 1x1 `nn.Conv` (with its bias when there is no BN) and
    `nn.BatchNorm`, from the same parameters: the output and the gradients of both kernels, the bias and the input."""
    u = jnp.asarray(np.random.default_rng(0).normal(size=(2, 11, 11, 3)), jnp.float32)
    ours = inception.SeparableConvBN(5, (7, 7), (2, 2), depth_multiplier=4, activation="tanh", batch_norm=batch_norm)
    variables = jax.jit(functools.partial(ours.init, train=True))(jax.random.key(0), u)

    def reference(variables, u):
        params = variables["params"]
        grouped = nn.Conv(12, (7, 7), strides=(2, 2), padding="SAME", feature_group_count=3, use_bias=False)
        x = grouped.apply({"params": params["depthwise"]}, u)
        x = nn.Conv(5, (1, 1), use_bias=not batch_norm).apply({"params": params["pointwise"]}, x)
        if batch_norm:  # Flax's layer, biased variance: the output in training does not depend on that choice
            x, _ = nn.BatchNorm(use_running_average=False, epsilon=1e-5).apply(
                {"params": params["BatchNorm_0"], "batch_stats": variables["batch_stats"]["BatchNorm_0"]},
                x,
                mutable=["batch_stats"],
            )
        return jnp.tanh(x)

    def apply(variables, u):
        return (
            ours.apply(variables, u, train=True, mutable=["batch_stats"])[0]
            if batch_norm
            else ours.apply(variables, u, train=True)
        )

    @jax.jit  # one program (op by op, each primitive compiled on its own: most of the test's time)
    def outputs_and_gradients(variables, u):
        def loss(f, *a):
            return jnp.sum(jnp.sin(f(*a)) * u[:, :6, :6, :1])

        # d/d(parameters, input), ours then the reference's
        grads = [jax.grad(functools.partial(loss, f), (0, 1))(variables, u) for f in (apply, reference)]
        return (apply(variables, u), reference(variables, u)), grads

    assert variables["params"]["depthwise"]["kernel"].shape == (7, 7, 1, 12)
    assert variables["params"]["pointwise"]["kernel"].shape == (1, 1, 12, 5)
    assert ("bias" in variables["params"]["pointwise"]) is not batch_norm
    outputs, grads = outputs_and_gradients(variables, u)
    np.testing.assert_allclose(*outputs, rtol=1e-5, atol=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5), *grads)
