"""The programs a run or a sweep compiles, lowered on this CPU machine for GPUs and TPUs (`jax.export` with
`platforms=("cuda",)` and `("tpu",)`): the StableHLO those devices would compile, checked as text.

Programs, built by the functions the loop builds them with (`loop.training_program`, `loop.evaluation_programs`,
the layouts of `sharding` and `sweep.group`), from the states' shapes (`state.initializer` under `jax.eval_shape`:
nothing is computed): the single and the fused (K steps) training step, the evaluation step, Algorithm 2's
moments and population, a sweep group's vmapped training step and the data-parallel training step on the 8
simulated devices (tests/conftest.py; each device a mini-batch of the config's size), for the Figure 1 MLP, the
x0.125 BN-Inception of Table 2 (its quick variant, cut after module 3c: the modules after it repeat the same
layers) and the BN-LSTM of sequential MNIST (784 time steps), in float32 and bfloat16.

What is checked on every program: no host callback; the training steps donate the state and nothing else, the
other programs donate nothing; convolutions stay convolutions (every forward convolution has its two gradients as
convolutions: no CPU rewrite into matmuls); in bfloat16, every matmul and convolution takes bfloat16 operands while
BN's statistics, the parameters, the optimizer state and the loss stay float32. Then, on their own: the CPU
program of a large convolution still gets the matmul gradients (`convolution.conv_general_dilated`), and
global-batch BN on 8 devices reduces its moments across them, BN over groups of 4 devices within the groups, and
not at all when `virtual_batch_size` is the per-device batch.
"""

from __future__ import annotations

import functools
import math
import re
from collections import Counter

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from config_files import fashion_table2, load_config_file, mnist_mlp

from bnrepro import convolution, layers, models
from bnrepro.sweep.group import VmappedGroup
from bnrepro.training import loop, steps
from bnrepro.training.device_data import EVAL_BATCH_SIZE, Dataset
from bnrepro.training.sharding import OneModel
from bnrepro.training.state import initializer

seq_mnist = load_config_file("seq_mnist")

PLATFORMS = ("cuda", "tpu")
MODELS = ("mlp", "inception", "lstm")
DTYPES = ("float32", "bfloat16")
PROGRAMS = ("train_1", "train_k", "eval", "moments", "population", "group", "data_parallel")
TRAINING = ("train_1", "train_k", "group", "data_parallel")  # the programs that donate the state
K, GROUP, DEVICES = 3, 2, 8  # fused steps (the scan's length changes nothing in the program), models in a group
NUM_EXAMPLES = 60_000  # the training set's rows (MNIST, Fashion-MNIST), 28x28 uint8 images
# The custom calls a program may hold: sharding annotations. A host callback (jax.pure_callback, jax.debug.*,
# io_callback) would be an xla_*python*_callback target; from this machine one does not even lower for cuda or tpu
# ("the platform for the specified backend cpu is different from the lowering platform"), so export would fail.
ALLOWED_CUSTOM_CALLS = {"Sharding", "SPMDFullToShardShape", "SPMDShardToFullShape"}


def config_of(
    model: str, dtype: str, data_parallel: bool = False, virtual_batch_size: int | None = None,
    device_group_size: int | None = None,
):  # fmt: skip
    config = {
        "mlp": lambda: mnist_mlp.get_config("bn"),
        "inception": lambda: fashion_table2.get_config("bn_x5,quick"),  # the net cut after module 3c
        "lstm": lambda: seq_mnist.get_config("bn_lstm"),
    }[model]()
    config.dtype = dtype
    if data_parallel:  # each device takes a mini-batch of the config's size (the paper's per-replica batches)
        config.batch_size *= DEVICES
    config.model.bn.virtual_batch_size = virtual_batch_size
    config.model.bn.device_group_size = device_group_size
    return config


def replicated(tree, sharding):
    """`tree`'s shapes, placed (as a layout places them) by `sharding`."""
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), tree)


@functools.cache
def program(
    model_name: str, dtype: str, name: str, virtual_batch_size: int | None = None,
    device_group_size: int | None = None,
):  # fmt: skip
    """The jitted program `name` and the shapes of its arguments, as the loop builds and calls it."""
    config = config_of(model_name, dtype, name == "data_parallel", virtual_batch_size, device_group_size)
    layout = OneModel(DEVICES if name == "data_parallel" else 1, config.batch_size)
    model = models.create_model(config.model, config.dtype, batch_shards=layout.batch_shards)
    images = jax.ShapeDtypeStruct((config.batch_size, 28, 28), jnp.uint8)
    state = jax.eval_shape(initializer(config, model), jax.random.key(0), images)
    data = Dataset(
        jax.ShapeDtypeStruct((NUM_EXAMPLES, 28 * 28 // 4), jnp.uint32),
        jax.ShapeDtypeStruct((NUM_EXAMPLES,), jnp.int32),
        (28, 28),
        np.dtype(np.uint8),
    )
    permutation = jax.ShapeDtypeStruct((NUM_EXAMPLES,), jnp.int32)
    one = OneModel(1, config.batch_size)
    if name in ("train_1", "train_k"):
        return loop.training_program(config, one, 1 if name == "train_1" else K), (state, data, permutation)
    if name == "group":
        stacked = jax.tree.map(lambda x: jax.ShapeDtypeStruct((GROUP, *x.shape), x.dtype), (state, permutation))
        return loop.training_program(config, VmappedGroup(GROUP, 1), K), (stacked[0], data, stacked[1])
    if name == "data_parallel":
        everywhere = layout.batch_sharding.update(spec=jax.sharding.PartitionSpec())
        return loop.training_program(config, layout, K), replicated((state, data, permutation), everywhere)
    programs = loop.evaluation_programs(model, one)
    batch = jax.eval_shape(functools.partial(steps.minibatch, batch_size=config.batch_size), data, permutation, 0)
    if name == "eval":
        test_batch = {
            "image": jax.ShapeDtypeStruct((EVAL_BATCH_SIZE, 28, 28), jnp.float32),
            "label": jax.ShapeDtypeStruct((EVAL_BATCH_SIZE,), jnp.int32),
            "mask": jax.ShapeDtypeStruct((EVAL_BATCH_SIZE,), jnp.bool_),
        }
        return programs.eval_step, (state, state.batch_stats, test_batch)
    if name == "moments":
        return programs.moments, (state, batch)
    moments = jax.eval_shape(programs.moments, state, batch)
    return programs.population, ([moments] * config.population_batches,)


@functools.cache
def traced(model_name: str, dtype: str, name: str) -> jax.stages.Traced:
    """Program `name` traced once, for every platform (what `jax.export.export` does before it lowers)."""
    jitted, args = program(model_name, dtype, name)
    return jitted.trace(*args)


@functools.cache
def exported(model_name: str, dtype: str, name: str, platform: str) -> str:
    """The StableHLO text of program `name` lowered for `platform`, as `jax.export.export(jitted,
    platforms=(platform,))` lowers it."""
    return traced(model_name, dtype, name).lower(lowering_platforms=(platform,)).as_text(debug_info=True)


def custom_call_targets(text: str) -> set[str]:
    return set(re.findall(r"custom_call @([\w.]+)", text))


def count(op: str, text: str) -> int:
    return len(re.findall(rf"\b{re.escape(op)}\b", text))


def main_signature(text: str) -> tuple[list[tuple[str, str, str]], list[tuple[str, str]]]:
    """The arguments of `main` as (element type, attributes, name) and its results as (element type, name)."""
    line = next(line for line in text.splitlines() if "func.func public @main(" in line)
    head, results = line.split(") -> (", 1) if ") -> (" in line else line.split(") -> ", 1)
    arguments = re.findall(r"%arg\d+: tensor<(?:[\dx]*x)?(\w+)>( \{[^}]*\})? loc\(\"([^\"]*)\"\)", head)
    outputs = re.findall(r"tensor<(?:[\dx]*x)?(\w+)> \{[^}]*jax\.result_info = \"([^\"]*)\"", results)
    return arguments, outputs


def operand_types(op: str, text: str) -> list[tuple[str, ...]]:
    """The element types of the operands of every `op` (e.g. stablehlo.dot_general) in `text`."""
    return [
        tuple(re.findall(r"tensor<(?:[\dx]*x)?(\w+)>", operands))
        for operands in re.findall(rf"{re.escape(op)} .*: \(([^)]*)\) ->", text)
    ]


def named_locations(text: str) -> dict[str, str]:
    """`#locN` -> the name it gives (e.g. "jit(train_steps)/jvp(MLP)/DenseBN_0/BatchNorm_0/reduce_sum")."""
    return dict(re.findall(r"^(#loc\d+) = loc\(\"([^\"]*)\"", text, re.MULTILINE))


# Where BN layers' operations are located: `layers.BatchNorm` is "BatchNorm_<i>" in the MLP and BN-Inception,
# "bn_hidden", "bn_input" and "bn_cell" in the BN-LSTM.
BN_SCOPE = re.compile(r"/(BatchNorm_\d+|bn_hidden|bn_input|bn_cell)/")


def bn_sum_types(text: str) -> list[str]:
    """The element types of the additive reductions (BN's means and variances) located in a BN layer."""
    names = named_locations(text)
    found = re.findall(
        r"stablehlo\.reduce\(.*applies stablehlo\.add .*: \(tensor<(?:[\dx]*x)?(\w+)>.* loc\((#loc\d+)\)", text
    )
    return [dtype for dtype, location in found if BN_SCOPE.search(names.get(location, ""))]


@pytest.mark.parametrize("name", PROGRAMS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("model_name", MODELS)
def test_every_program_lowers_for_gpu_and_tpu(model_name: str, dtype: str, name: str) -> None:
    for platform in PLATFORMS:
        text = exported(model_name, dtype, name, platform)
        assert custom_call_targets(text) <= ALLOWED_CUSTOM_CALLS, (platform, custom_call_targets(text))
        arguments, outputs = main_signature(text)
        state_arguments = [a for a in arguments if a[2].startswith("state.")]
        donated = [a[2] for a in arguments if "tf.aliasing_output" in a[1] or "jax.buffer_donor" in a[1]]
        if name in TRAINING:
            assert state_arguments and donated == [a[2] for a in state_arguments], (platform, donated)
        else:
            assert not donated, (platform, donated)

        if model_name == "inception":
            # Every forward convolution (the evaluation step's) has its two gradients as convolutions but the
            # first one, whose input (the images) takes no gradient: none became a matmul.
            forward = count("stablehlo.convolution", exported(model_name, dtype, "eval", platform))
            expected = 3 * forward - 1 if name in TRAINING else forward if name != "population" else 0
            assert forward > 0 and count("stablehlo.convolution", text) == expected, (platform, expected)

        if dtype == "bfloat16":
            products = operand_types("stablehlo.dot_general", text) + operand_types("stablehlo.convolution", text)
            assert (name == "population") != bool(products), platform
            assert all(types == ("bf16", "bf16") for types in products), (platform, Counter(products))
            floats = [a for a in arguments if a[0].startswith(("f", "bf"))] + [o for o in outputs if o[0][0] in "fb"]
            assert floats and all(a[0] == "f32" for a in floats), (platform, [a for a in floats if a[0] != "f32"])
            if name in (*TRAINING, "moments"):  # the programs that compute BN's moments of a mini-batch
                statistics = bn_sum_types(text)
                assert statistics and set(statistics) == {"f32"}, (platform, Counter(statistics))
            if name in TRAINING:
                assert any(o[1].endswith("['loss']") and o[0] == "f32" for o in outputs), (platform, outputs)

        if name == "data_parallel":  # one program for the 8 devices, each mini-batch split along "batch"
            assert "mhlo.num_partitions = 8" in text and 'sdy.mesh @mesh = <["batch"=8]>' in text, platform
            assert re.search(r'sdy\.sharding_constraint %\w+ <@mesh, \[\{"batch"\}, \{\}, \{\}\]>', text), platform


def test_only_the_cpu_program_differentiates_a_large_convolution_as_matmuls() -> None:
    """A ConvBN layer, 3x3 from 64 channels over two 64x64 images (4.7M patches' elements, above
    `GEMM_GRADIENTS_MIN_ELEMENTS`), differentiated: lowered for CPU its two gradients are matmuls over the
    patches (`convolution.conv_with_gemm_gradients`), for GPU and TPU they are XLA's convolutions."""
    assert 2 * 64 * 64 * 3 * 3 * 64 >= convolution.GEMM_GRADIENTS_MIN_ELEMENTS
    layer = layers.ConvBN(8, (3, 3))
    images = jax.ShapeDtypeStruct((2, 64, 64, 64), jnp.float32)
    variables = jax.eval_shape(functools.partial(layer.init, train=False), jax.random.key(0), images)

    def loss(variables: dict, images: jax.Array) -> jax.Array:
        y, _ = layer.apply(variables, images, train=True, mutable=["batch_stats"])
        return jnp.sum(jnp.sin(y))

    gradients = jax.jit(jax.grad(loss, argnums=(0, 1)))
    counts = {}
    for platform in ("cpu", *PLATFORMS):
        text = jax.export.export(gradients, platforms=(platform,))(variables, images).mlir_module()
        counts[platform] = (count("stablehlo.convolution", text), count("stablehlo.dot_general", text))
    assert counts == {"cpu": (1, 2), "cuda": (3, 0), "tpu": (3, 0)}

    # The Table-2 net's data-parallel step: at 8 x 32 images its larger 3x3 convolutions are above the threshold,
    # and on CPU only they become matmuls (the GPU and TPU programs have all 3F - 1, checked above).
    forward = count("stablehlo.convolution", exported("inception", "float32", "eval", "cuda"))
    cpu = exported("inception", "float32", "data_parallel", "cpu")
    cuda = exported("inception", "float32", "data_parallel", "cuda")
    assert count("stablehlo.convolution", cuda) == 3 * forward - 1 > count("stablehlo.convolution", cpu)
    assert count("stablehlo.dot_general", cpu) > count("stablehlo.dot_general", cuda)


def all_reduces(hlo: str) -> list[tuple[int, int, list[str]]]:
    """Every all-reduce of a compiled (SPMD-partitioned) program's text: the elements it reduces, the devices in
    each of its groups, and the ops whose results it reduces (from its metadata; several when XLA combined them)."""
    found = []
    for line in hlo.splitlines():
        line = re.sub(r"/\*index=\d+\*/", "", line)
        match = re.search(r"= \(?([^=]*?)\)? all-reduce(?:-start)?\(", line)
        if not match:
            continue
        shapes = re.findall(r"\[([\d,]*)\]", match[1])
        elements = sum(math.prod(int(d) for d in dims.split(",") if d) for dims in shapes)
        groups = re.search(r"replica_groups=(\{\{[\d,]*\}|\[\d+,(\d+)\]<=|mesh\[([^\]]*)\] \{([^}]*)\})", line)
        if groups[1].startswith("{{"):
            size = len(groups[1][2:-1].split(","))
        elif groups[2]:
            size = int(groups[2])
        else:
            axes = dict(re.findall(r"'(\w+)'=(\d+)", groups[3]))
            size = math.prod(int(axes[axis]) for axis in re.findall(r"'(\w+)'", groups[4]))
        name = re.search(r'op_name="([^"]*)"', line)[1]
        combined = re.fullmatch(r"(.*?/)\((.*)\)", name)  # "prefix/(op:op:...)"
        found.append((elements, size, combined[2].split(":") if combined else [name]))
    return found


def test_global_batch_bn_reduces_its_moments_across_the_devices_groups_within_groups_virtual_batches_not() -> None:
    """The MLP's data-parallel training step compiled for the 8 CPU devices: the SPMD-partitioned program (the
    exported one is the program before partitioning, without its collectives; GPUs and TPUs partition it alike).
    With global-batch BN each BN layer all-reduces its two moments over the 8 devices in the forward pass, on
    their own: normalizing waits for them. With `device_group_size = 4` it all-reduces them within groups of 4
    devices only. With `virtual_batch_size` = the per-device batch no forward-pass sum is reduced on its own: BN's
    sums reach the other devices only in the one all-reduce that carries the gradient (for the moving averages,
    which no step reads)."""
    config = config_of("mlp", "float32", data_parallel=True)
    num_params = 784 * 100 + 2 * 100 * 100 + 100 * 10 + 10 + 3 * 2 * 100  # W, b and BN's gamma, beta
    variants = {"global": {}, "groups of 4": {"device_group_size": 4},
                "per device": {"virtual_batch_size": config.batch_size // DEVICES}}  # fmt: skip
    forward_moments = {}
    for variant, options in variants.items():
        jitted, args = program("mlp", "float32", "data_parallel", **options)
        reduces = all_reduces(jitted.lower(*args).compile().as_text())
        assert sum(elements for elements, _, _ in reduces) >= num_params  # the gradient
        if variant != "groups of 4":  # (with groups, XLA sums gamma's and beta's gradients in the group first)
            assert all(size == DEVICES for _, size, _ in reduces), reduces
        forward = [
            (size, ops)
            for _, size, ops in reduces
            if all(re.search(r"\bjvp\(MLP\)/DenseBN_\d/BatchNorm", op) for op in ops)
        ]
        forward_moments[variant] = Counter(
            (re.search(r"DenseBN_\d", op)[0], size) for size, ops in forward for op in ops
        )
    assert forward_moments == {
        "global": {(f"DenseBN_{i}", DEVICES): 2 for i in range(3)},
        "groups of 4": {(f"DenseBN_{i}", 4): 2 for i in range(3)},
        "per device": {},
    }
