"""Train-step time of BN-Inception with and without BN, side by side, and of the same net in PyTorch.

By default the net is `configs/fashion_table2.py`'s `bn_x5` (width x0.125, small-input stem, ReLU, no LRN, no
dropout; 28x28x1 input, batch 32, SGD with momentum); `--image_size=224` gives the paper's net (the stride-2 stem
with its first max pool, 224x224x3, 1000 classes; `--width_multiplier=1.0` for Figure 5's widths). BN is the
only difference between the variants:

* no BN: every convolution keeps its bias, nothing normalizes;
* BN, paper VJP: `model.bn.backward="paper"`, Sec. 3's backward pass as a custom VJP (the default);
* BN, XLA's conv gradients: the default, but every convolution differentiated by XLA itself
  (`layers.GEMM_GRADIENTS_MIN_ELEMENTS` set to infinity; by default the large ones take
  `layers.conv_with_gemm_gradients`; at the CPU scale none is large enough, so this row is the default's);
* BN, autodiff: `model.bn.backward="autodiff"`;
* BN, flax.linen.BatchNorm: Flax's layer in place of ours (the model unchanged, its `norm` swapped);
* PyTorch eager (and `torch.compile` with `--torch_compile`; its first step compiles for minutes), no BN and BN:
  the same net (`torch_bn_inception`, parameter counts checked equal) and step, when torch is importable
  (it is not a dependency: `pip install --target DIR torch`, then `--torch_path=DIR`).

Each JAX variant trains through the loop's on-device steps (`OnDeviceSteps.train`) with one step per dispatch, as
the config trains on CPU (XLA:CPU runs convolutions several times slower inside a while loop), on random uint8 images.
Compile time is reported apart; then the variants take turns, `--steps` steps each, `--repeats` rounds, so that
load from other processes hits all of them alike, and each one's best round is reported (its median round beside
it: on a noisy machine compare both). The process is pinned to `--cpu_cores` cores before JAX starts, and malloc
keeps freed memory (`bnrepro.cpu.keep_freed_memory`), as `bnrepro.main` and a sweep's workers do, in one arena
for the 224 px net.

    python scripts/bench_inception.py [--steps=10] [--repeats=10] [--cpu_cores=1] [--torch_path=DIR]
    python scripts/bench_inception.py --cpu_cores=0 --image_size=224 --width_multiplier=1.0 --batch_size=8

Measured 2026-12-03 (12:49-13:17) on the 2-core x86 VM, PyTorch 2.13 CPU wheel, nothing else running, the VM
1.5-2x slower than the same morning (PyTorch eager's 224 px BN step: 548 ms at 07:28, 962-1045 ms now) and drifting
within runs: read the ratios within a table, not the milliseconds across tables.

    python scripts/bench_inception.py --cpu_cores=0 --image_size=224 --width_multiplier=1.0 --batch_size=8 \
        --steps=3 --repeats=4 --torch_path=DIR

    | variant | compile (s) | ms/step | overhead vs no BN | speed vs PyTorch eager BN |
    | --- | ---: | ---: | ---: | ---: |
    | no BN | 10.9 | 917.9 | +0.0% | 1.05x |
    | BN, paper VJP (default) | 17.2 | 971.6 | +5.9% | 0.99x |
    | BN, XLA's conv gradients | 16.7 | 1182.1 | +28.8% | 0.81x |
    | BN, autodiff | 17.1 | 966.4 | +5.3% | 0.99x |
    | BN, flax.linen.BatchNorm | 20.2 | 979.0 | +6.7% | 0.98x |
    | PyTorch eager, no BN | 1.0 | 898.5 | +0.0% | 1.07x |
    | PyTorch eager, BN | 0.9 | 961.5 | +7.0% | 1.00x |

A second run right after it: BN 959.7 ms against PyTorch eager's 949.2 (0.99x), XLA's conv gradients 1190.2
(0.80x), no BN 909.2 against 891.1.

    python scripts/bench_inception.py --cpu_cores=0 --repeats=5 --torch_path=DIR --torch_compile

    | variant | compile (s) | ms/step | overhead vs no BN | speed vs PyTorch eager BN |
    | --- | ---: | ---: | ---: | ---: |
    | no BN | 10.9 | 50.4 | +0.0% | 1.94x |
    | BN, paper VJP (default) | 19.7 | 65.2 | +29.5% | 1.49x |
    | BN, XLA's conv gradients | 19.0 | 65.2 | +29.5% | 1.50x |
    | BN, autodiff | 17.0 | 63.3 | +25.7% | 1.54x |
    | BN, flax.linen.BatchNorm | 16.1 | 66.2 | +31.4% | 1.47x |
    | PyTorch eager, no BN | 0.2 | 85.4 | +0.0% | 1.14x |
    | PyTorch eager, BN | 0.1 | 97.5 | +14.2% | 1.00x |
    | PyTorch torch.compile, no BN | 3.8 | 74.2 | +0.0% | 1.31x |
    | PyTorch torch.compile, BN | 4.3 | 69.1 | -6.8% | 1.41x |

(torch.compile's compile times are from its warm on-disk cache; cold, 190-230 s.) The same command 25 minutes
earlier, before `keep_freed_memory`: BN 72.8 ms, +8.0% over no BN (flax.linen.BatchNorm +38.3%), PyTorch eager
93.8, torch.compile 65.6. So at the CPU scale our BN step is 1.29-1.49x PyTorch eager and 0.90-1.06x
torch.compile, and BN costs +8% to +30% on two cores (XLA's conv gradients row: the same program, as none of
this net's convolutions is large enough for `conv_with_gemm_gradients`). The morning's runs (07:13-07:28, the
previous commit): CPU scale BN 39.3 ms against eager 47.4 (1.21x) and torch.compile 35.6 (0.91x), +16% over no BN;
224 px 630.5 against eager 548.2 (0.87x).

Two hours later (15:20-15:33), the VM slower still (PyTorch eager's 224 px BN step 1150 ms), with the median
round beside the best (the same commands, `--repeats=10` at the CPU scale):

    | variant | compile (s) | steps/s | ms/step | median ms/step | overhead vs no BN | speed vs PyTorch eager BN |
    | --- | ---: | ---: | ---: | ---: | ---: | ---: |
    | no BN | 13.5 | 0.9 | 1154.7 | 1213.2 | +0.0% | 1.00x |
    | BN, paper VJP (default) | 27.7 | 0.8 | 1233.8 | 1282.5 | +6.8% | 0.93x |
    | BN, XLA's conv gradients | 23.6 | 0.6 | 1655.1 | 1737.8 | +43.3% | 0.69x |
    | BN, autodiff | 22.5 | 0.8 | 1200.9 | 1332.5 | +4.0% | 0.96x |
    | BN, flax.linen.BatchNorm | 24.1 | 0.9 | 1173.8 | 1274.3 | +1.7% | 0.98x |
    | PyTorch eager, no BN | 1.7 | 0.8 | 1197.7 | 1267.4 | +0.0% | 0.96x |
    | PyTorch eager, BN | 1.2 | 0.9 | 1150.2 | 1208.9 | -4.0% | 1.00x |

    | variant | compile (s) | steps/s | ms/step | median ms/step | overhead vs no BN | speed vs PyTorch eager BN |
    | --- | ---: | ---: | ---: | ---: | ---: | ---: |
    | no BN | 17.5 | 15.6 | 64.1 | 85.4 | +0.0% | 1.82x |
    | BN, paper VJP (default) | 26.7 | 11.2 | 89.3 | 102.0 | +39.5% | 1.30x |
    | BN, XLA's conv gradients | 24.2 | 12.9 | 77.4 | 101.5 | +20.8% | 1.51x |
    | BN, autodiff | 29.1 | 12.9 | 77.8 | 98.6 | +21.5% | 1.50x |
    | BN, flax.linen.BatchNorm | 23.4 | 12.2 | 82.3 | 101.4 | +28.4% | 1.42x |
    | PyTorch eager, no BN | 0.3 | 9.2 | 108.9 | 130.3 | +0.0% | 1.07x |
    | PyTorch eager, BN | 0.5 | 8.6 | 116.6 | 143.5 | +7.0% | 1.00x |
    | PyTorch torch.compile, no BN | 5.1 | 11.5 | 86.6 | 121.6 | +0.0% | 1.35x |
    | PyTorch torch.compile, BN | 5.5 | 11.7 | 85.3 | 115.7 | -1.5% | 1.37x |

At the CPU scale the default's row and the XLA's-conv-gradients row run the same program: 89.3 against 77.4 ms at
best, 102.0 against 101.5 at the median, so a best round here is worth +-15%. A run just before (`--repeats=5`): BN
81.9 ms, no BN 69.0 (+18.8%), torch.compile BN 79.3 (0.97x), PyTorch eager BN 125.3.

All the CPU-scale tables above ran with malloc's one arena for all threads, which the CPU-scale step pays for
(`keep_freed_memory` below). Without it (`keep_freed_memory()`, as now), 16:00-16:06, the VM faster again, the
same command (`--repeats=10`) twice:

    | variant | compile (s) | steps/s | ms/step | median ms/step | overhead vs no BN | speed vs PyTorch eager BN |
    | --- | ---: | ---: | ---: | ---: | ---: | ---: |
    | no BN | 7.7 | 24.1 | 41.6 | 41.8 | +0.0% | 1.88x |
    | BN, paper VJP (default) | 13.3 | 20.9 | 47.9 | 48.9 | +15.2% | 1.63x |
    | BN, XLA's conv gradients | 14.0 | 20.7 | 48.2 | 49.0 | +15.9% | 1.62x |
    | BN, autodiff | 12.1 | 20.5 | 48.7 | 50.0 | +17.1% | 1.61x |
    | BN, flax.linen.BatchNorm | 12.6 | 20.1 | 49.9 | 50.8 | +19.9% | 1.57x |
    | PyTorch eager, no BN | 0.2 | 14.3 | 70.0 | 71.6 | +0.0% | 1.12x |
    | PyTorch eager, BN | 0.4 | 12.8 | 78.2 | 81.2 | +11.7% | 1.00x |
    | PyTorch torch.compile, no BN | 3.5 | 16.9 | 59.3 | 60.7 | +0.0% | 1.32x |
    | PyTorch torch.compile, BN | 3.8 | 18.5 | 54.1 | 54.9 | -8.8% | 1.45x |

The second: BN 47.8 ms (median 48.7), no BN 41.1 (+16.2%), torch.compile BN 51.9 (52.7), 1.09x; PyTorch eager BN
76.1 (1.59x). The two identical rows now agree within 1%.

Targets of issue 15 and where they stand: >= PyTorch eager at 224 px: 0.93-0.99x in three runs (0.94x at the
median), level within the VM's noise (0.42x at the start); >= torch.compile at the CPU scale: 1.09-1.13x in the
last two runs (1.08-1.12x at the median; 0.90-1.10x with one arena; 0.74x at the start), met; BN overhead <= 10% at
the CPU scale: +15% to +16% in the last two runs (+19% to +30% with one arena; ~20% at the start), not met. Each BN
layer adds three passes over its feature map (sum x and sum x^2 forward, sum dy x backward) at XLA:CPU's reduction
speed, ~0.1 ms each for the first modules' 32x28x28x8 on two cores, over 69 layers; every form of the two forward
sums in one pass was slower (below). What changed, what did not help, and where the time goes:

Kept, in the order they landed (224 px figures are one BN step, 8 images):
* `inception.max_pool`: the max-pool gradient without XLA's select-and-scatter, which XLA:CPU runs as a serial
  scatter (190 ms for the stem pool's gradient alone, 155 ms for the second pool's; now elementwise, ~15 ms).
* The stem's separable convolution as one dense convolution with the product kernel (`SeparableConvBN`; the
  grouped 7x7 convolution's kernel gradient took 650 ms as a 3-D convolution over the whole image).
* 1x1 convolutions as matmuls (`layers.conv_general_dilated`; XLA:CPU took 3-5x longer for their kernel
  gradients as convolutions). With the stem: 742 -> 506 ms (idle, back to back).
* BN over a convolution's N, H, W: one-pass moments guarded by a per-layer two-pass fallback
  (`batchnorm._guarded_moments`) and dl/dgamma as sum dy x - mu sum dy, so that x - mu is never written out
  (XLA:CPU's reductions take no per-feature broadcast; the two-pass form wrote it at full size in 69 fusions).
* The paper backward's whole pass under the one-pass/two-pass `cond` (`batchnorm._transform_paper_bwd`): with only
  dl/dgamma's sum inside it XLA:CPU fused nothing across it. In one process, interleaved, one core, 30 rounds:
  BN's overhead +22.3% -> +14.6% (best; medians +27.0% -> +11.5%), the same as with no guard at all (+15.2%).
* Large convolutions' gradients as matmuls over im2col's patches (`layers.conv_with_gemm_gradients`, on CPU for
  convolutions with >= 3M patches' elements: at 224 px the stem, conv2 and the 3x3 convolutions at 28x28 over
  64+ channels). `scripts/bench_convs.py` times each of the net's convolutions alone: summed over the net,
  forward / input gradient / kernel gradient in ms, ours 264 / 331 / 487, with XLA's own gradients
  317 / 409 / 954, PyTorch 205 / 236 / 258 (each call pays for faulting in its fresh output, hence sums above a
  step's time). The stem's kernel gradient: 95 against 142 ms (PyTorch 15); conv2's: 90 against 159 (PyTorch 42).
  In the step: 0.81x -> 0.99x PyTorch eager (table above); applied to every convolution it was slower, at 224 px
  (1190 against 1140 ms, 1369 against 1233) and at the CPU scale (8-25%, in two runs).
* `bnrepro.cpu.keep_freed_memory` (in `bnrepro.main`, a sweep's workers and here): XLA:CPU allocates each
  step's temporaries anew (380 MB at 224 px), which glibc mmap'ed and unmapped each time, so each step faulted
  ~95,000 pages in. In three pairs of processes: 997-1014 against 1069-1126 ms at 224 px, PyTorch unchanged
  (919-1005 ms). It first put all threads on one arena, which the 224 px temporaries need (over 64 MiB a thread's
  own arena mmaps them anyway) but which costs the CPU-scale step a lock in every thread's malloc: there, in
  pairs of processes, 84-111 ms per BN step with one arena, 70-80 with glibc's default, 49-62 with the threads'
  own arenas and nothing mmap'ed (41 MB of temporaries); back to back at 16:08, 68.2-68.9, 61.3-62.1 and 47.6-47.7.
  Hence one arena only for the 224 px net (`one_arena`).

Tried and not kept:
* Pools as maxima / sums over the 9 strided slices of each window (`reduce_window` alone is 2-6x slower:
  3.6 against 1.7 ms for the stem pool, 2.7 against 0.45 ms for a 3x3 average over 8x28x28x256), with a box-sum
  gradient for the stride-1 average pools: alone 0.9 against 5.1 ms; inside the whole step, the four combinations
  (old/new max pool x old/new average pool) in one process were within 2% of each other at 224 px (551-561 ms) and
  at the CPU scale (42-48 ms), so XLA:CPU's fusion of the pools with their neighbours already hid that cost.
* Matmul forms of the 3x3 kernel gradients (9 shifted-slice GEMMs; one GEMM over concatenated slices), an earlier
  try: slower than XLA's convolution except at 14x14. Measured then with glibc unmapping each step's temporaries,
  and for all convolutions; kept now for the large ones only, with `keep_freed_memory` (above).
* The forward pass as a matmul over the patches too (kept as the residual for the backward pass), at 28x28 and
  below: the same step time (1137 against 1134 ms, 1210 against 1209).
* `GLIBC_TUNABLES=glibc.malloc.hugetlb=1` (transparent huge pages for malloc): 95,000 -> 700 faults per step,
  no faster.
* A max-pool backward from an int8 argmax with interior padding (slower than the kept one in the same harness).
* XLA:CPU flags (`xla_cpu_enable_fast_min_max`, the concurrency-optimized scheduler, oneDNN, XNNPACK off: within
  +-4%; native instead of YNN reductions, `xla_cpu_experimental_ynn_fusion_type=`: +35% instead of +26% BN
  overhead); the moments alone in one pass with x - mu kept as the residual (no gain).
* sum x and sum x^2 in one reduction rather than two (YNN's, each fused with its square): over [x, x^2]
  concatenated or stacked, or as one variadic `lax.reduce`, on two cores, batch 32: 159 / 149 / 196 us against
  137 at 28x28x8, 108 / 122 / 142 against 45 at 14x14x24, 56 / 58 / 94 against 23 at 7x7x44 (XLA:CPU writes the
  concatenation out, and runs the variadic reduce with its own slower emitter).

Where the time goes (a `jax.profiler` trace with XLA:CPU's per-thunk TraceMe, `xla_cpu_enable_xprof_traceme`, thunks
mapped to the optimized HLO; `scripts/bench_convs.py` per convolution): at 224 px the convolutions, where XLA:CPU's
forward passes and the smaller convolutions' gradients are 1.3-2x PyTorch's oneDNN (the 3x3 convolutions at 28x28:
forward 8-10 ms against 4-6); at the CPU scale BN's 69 layers over small tensors (4 to 44 channels), each with
three more passes over its feature map (one reduction thunk each, ~0.1 ms at 32x28x28x8) and a few small fusions
and `cond`s. `xla_cpu_use_thunk_runtime` is no longer a compile option in jax 0.10.2.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import math
import os
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import flax.linen as nn
import jax
import ml_collections
import numpy as np
from absl import app, flags
from ml_collections import config_flags

from bnrepro import data, layers, models
from bnrepro.cpu import keep_freed_memory, use_cpu_cores
from bnrepro.models import inception
from bnrepro.training.inputs import OnDeviceData
from bnrepro.training.loop import OnDeviceSteps
from bnrepro.training.sharding import OneModel
from bnrepro.training.state import create_train_state

_CONFIG = config_flags.DEFINE_config_file(
    "config", "configs/fashion_table2.py:bn_x5", "The net's config, BN switched per variant (run from the repo root)."
)
_STEPS = flags.DEFINE_integer("steps", 10, "Steps per variant in each timed round.")
_REPEATS = flags.DEFINE_integer("repeats", 10, "Timed rounds, the variants interleaved; the best is reported.")
_CPU_CORES = flags.DEFINE_integer("cpu_cores", 1, "CPU cores to run on (0 = all).")
_WIDTH = flags.DEFINE_float("width_multiplier", 0.125, "Width multiplier of the net (the config's: 0.125).")
_BATCH = flags.DEFINE_integer("batch_size", 32, "Mini-batch size (the config's: 32).")
_IMAGE_SIZE = flags.DEFINE_integer(
    "image_size",
    28,
    "28: the config's net (small-input stem, 28x28x1, 10 classes); 224: the paper's (224x224x3, 1000).",
)
_TORCH_PATH = flags.DEFINE_string("torch_path", "", "A directory holding torch (pip install --target DIR torch).")
_TORCH_COMPILE = flags.DEFINE_boolean("torch_compile", False, "Add torch.compile rows (each compiles for minutes).")

NUM_EXAMPLES = 4096  # random 28x28 uint8 images, the training and the (unused) test set (224 px: 4 batches)
NO_BN = "no BN"
TORCH_EAGER_BN = "PyTorch eager, BN"


class FlaxBatchNorm(nn.Module):
    """`flax.linen.BatchNorm` behind the interface of `bnrepro.layers.BatchNorm` (its momentum and eps)."""

    momentum: float = 0.99
    eps: float = 1e-5

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        return nn.BatchNorm(use_running_average=not train, momentum=self.momentum, epsilon=self.eps, name="bn")(x)


def _config(batch_norm: bool, backward: str) -> ml_collections.ConfigDict:
    """`--config` at `--width_multiplier` and `--batch_size`, with BN on or off."""
    config = _CONFIG.value.copy_and_resolve_references()
    with config.unlocked():
        config.batch_size = _BATCH.value
        config.model.width_multiplier = _WIDTH.value
        config.model.batch_norm = batch_norm
        config.model.bn.backward = backward
        if _IMAGE_SIZE.value != 28:
            config.model.small_input = False
            config.model.num_classes = 1000
            config.population_batches = 1  # 4 mini-batches of random images; evaluation is not timed
    return config


@contextlib.contextmanager
def xla_conv_gradients() -> Iterator[None]:
    """While in it, `layers.conv_general_dilated` leaves every convolution's gradients to XLA."""
    default = layers.GEMM_GRADIENTS_MIN_ELEMENTS
    layers.GEMM_GRADIENTS_MIN_ELEMENTS = math.inf
    try:
        yield
    finally:
        layers.GEMM_GRADIENTS_MIN_ELEMENTS = default


class Runner:
    """One variant, compiled: `run(steps)` trains that many steps, one dispatch each (the training loop's
    `OnDeviceSteps.train`, which starts a new epoch at each epoch's end), and blocks. With `xla_gradients`, the
    step is traced and compiled inside `xla_conv_gradients`."""

    def __init__(
        self,
        config: ml_collections.ConfigDict,
        splits: data.Splits,
        flax_bn: bool = False,
        xla_gradients: bool = False,
    ):
        with xla_conv_gradients() if xla_gradients else contextlib.nullcontext():
            self._compile(config, splits, flax_bn)

    def _compile(self, config: ml_collections.ConfigDict, splits: data.Splits, flax_bn: bool) -> None:
        model = models.create_model(config.model, config.dtype)
        if flax_bn:  # the model unchanged, Flax's layer as its BN layer
            bn = config.model.bn
            model = model.clone(norm=functools.partial(FlaxBatchNorm, momentum=bn.momentum, eps=bn.eps))
        layout = OneModel(config.num_devices, config.batch_size)
        data = OnDeviceData(config, layout, splits)
        self._input = OnDeviceSteps(config, layout, data)
        state = create_train_state(config, model, jax.random.key(0), data.example_images())
        self._state = layout.place_states([state])
        self._input.start(self._state)
        chunk = self._input.train(self._state, 1)
        self._state, self.compile_s = chunk.state, chunk.compile_seconds
        self.num_params = sum(p.size for p in jax.tree.leaves(state.params))

    def run(self, steps: int) -> None:
        for _ in range(steps):
            self._state = self._input.train(self._state, 1).state
        jax.block_until_ready(self._state)


def torch_bn_inception(
    torch: Any, model: inception.BNInception, bn: ml_collections.ConfigDict, in_channels: int
) -> Any:
    """`model`'s BN-Inception (`bnrepro.models.inception.BNInception`: separable stem, Figure 5's modules,
    global average pool, linear classifier) as a PyTorch NCHW module, layer for layer. Padding is PyTorch's
    symmetric k // 2 where XLA's SAME pads one more on the far side of a stride-2 layer (same shapes and FLOPs)."""
    nn, width = torch.nn, model.width

    def conv(cin: int, cout: int, k: int, stride: int = 1) -> Any:
        layers = [nn.Conv2d(cin, cout, k, stride, k // 2, bias=not model.batch_norm)]
        if model.batch_norm:  # PyTorch's momentum is the new batch's weight, ours the old value's
            layers.append(nn.BatchNorm2d(cout, bn.eps, 1 - bn.momentum))
        return nn.Sequential(*layers, nn.ReLU())

    class Module(nn.Module):  # one row of the table, as `InceptionModule`
        def __init__(self, spec: inception.ModuleSpec, cin: int):
            super().__init__()
            s, c = spec, width
            self.branch_1x1 = conv(cin, c(s.ch_1x1), 1) if s.ch_1x1 else None
            self.branch_3x3 = nn.Sequential(
                conv(cin, c(s.ch_3x3_reduce), 1), conv(c(s.ch_3x3_reduce), c(s.ch_3x3), 3, s.stride)
            )
            self.branch_double_3x3 = nn.Sequential(
                conv(cin, c(s.ch_double_3x3_reduce), 1),
                conv(c(s.ch_double_3x3_reduce), c(s.ch_double_3x3), 3),
                conv(c(s.ch_double_3x3), c(s.ch_double_3x3), 3, s.stride),
            )
            pool = (
                nn.AvgPool2d(3, s.stride, 1, count_include_pad=False)
                if s.pool == "avg"
                else nn.MaxPool2d(3, s.stride, 1)
            )
            self.branch_pool = nn.Sequential(pool, conv(cin, c(s.pool_proj), 1)) if s.pool_proj else pool
            self.out_channels = (c(s.ch_1x1) if s.ch_1x1 else 0) + c(s.ch_3x3) + c(s.ch_double_3x3)
            self.out_channels += c(s.pool_proj) if s.pool_proj else cin

        def forward(self, x: Any) -> Any:
            branches = [self.branch_1x1(x)] if self.branch_1x1 is not None else []
            return torch.cat(branches + [self.branch_3x3(x), self.branch_double_3x3(x), self.branch_pool(x)], 1)

    multiplier = max(min(model.stem_depth_multiplier, width(64) // in_channels), 1)
    stem_stride = 1 if model.small_input else 2
    stem = [
        nn.Conv2d(in_channels, in_channels * multiplier, 7, stem_stride, 3, groups=in_channels, bias=False),
        *conv(in_channels * multiplier, width(64), 1),
    ]
    stem += [] if model.small_input else [nn.MaxPool2d(3, 2, 1)]
    stem += [conv(width(64), width(64), 1), conv(width(64), width(192), 3), nn.MaxPool2d(3, 2, 1)]
    layers, channels = stem, width(192)
    for spec in inception.figure_5_modules(model.pool_proj_4cd):
        layers.append(Module(spec, channels))
        channels = layers[-1].out_channels
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, model.num_classes)]
    return nn.Sequential(*layers)


class TorchRunner:
    """The same net and step (SGD with momentum on random uint8 images scaled to [0, 1]) in PyTorch, eager or
    under `torch.compile`; `compile_s` is the first step's time."""

    def __init__(self, torch: Any, config: ml_collections.ConfigDict, images: np.ndarray, compiled: bool):
        self._torch = torch
        torch.set_num_threads(len(os.sched_getaffinity(0)))
        pixels = torch.from_numpy(images if images.ndim == 4 else images[..., None]).permute(0, 3, 1, 2)
        net = torch_bn_inception(torch, models.create_model(config.model), config.model.bn, pixels.shape[1])
        self.num_params = sum(p.numel() for p in net.parameters())
        self._optimizer = torch.optim.SGD(net.parameters(), lr=config.learning_rate, momentum=0.9)
        self._net = torch.compile(net) if compiled else net
        self._batches = pixels.contiguous().split(config.batch_size)
        self._labels = torch.randint(0, config.model.num_classes, (config.batch_size,))
        self._step = 0
        start = time.perf_counter()
        self.run(1)
        self.compile_s = time.perf_counter() - start

    def run(self, steps: int) -> None:
        torch = self._torch
        for _ in range(steps):
            batch = self._batches[self._step % len(self._batches)].float() * (1.0 / 255.0)
            self._optimizer.zero_grad(set_to_none=True)
            torch.nn.functional.cross_entropy(self._net(batch), self._labels).backward()
            self._optimizer.step()
            self._step += 1


def round_seconds(runners: dict[str, Runner | TorchRunner], steps: int, repeats: int) -> dict[str, list[float]]:
    """Wall time of `steps` steps per variant in each of `repeats` rounds in which the variants take turns."""
    seconds: dict[str, list[float]] = {name: [] for name in runners}
    for _ in range(repeats):
        for name, runner in runners.items():
            start = time.perf_counter()
            runner.run(steps)
            seconds[name].append(time.perf_counter() - start)
    return seconds


def markdown_table(compile_s: dict[str, float], rounds: dict[str, list[float]], steps: int) -> str:
    """The results as a markdown table of each variant's best round (and its median round's ms/step): overhead is
    relative to the same framework and mode's no-BN net, speed to PyTorch eager's BN net (when measured; > 1 is
    faster), both of best rounds."""
    seconds = {name: min(times) for name, times in rounds.items()}
    columns = [
        "variant",
        "compile (s)",
        "steps/s",
        "ms/step",
        "median ms/step",
        "overhead vs no BN",
        "speed vs PyTorch eager BN",
    ]
    rows = ["| " + " | ".join(columns) + " |", "| --- |" + " ---: |" * (len(columns) - 1)]
    for name, total in seconds.items():
        baseline = name.rsplit(", ", 1)[0] + f", {NO_BN}" if name.startswith("PyTorch") else NO_BN
        overhead = 100 * (total / seconds[baseline] - 1)
        speed = f"{seconds[TORCH_EAGER_BN] / total:.2f}x" if TORCH_EAGER_BN in seconds else "-"
        rows.append(
            f"| {name} | {compile_s[name]:.1f} | {steps / total:.1f} | {1e3 * total / steps:.1f} "
            f"| {1e3 * statistics.median(rounds[name]) / steps:.1f} | {overhead:+.1f}% | {speed} |"
        )
    return "\n".join(rows)


def main(argv: list[str]) -> None:
    del argv
    # As bnrepro.main does, and one arena for the paper's net, whose steps' temporaries exceed 64 MiB (PyTorch's
    # rows run with it too).
    size = _IMAGE_SIZE.value
    keep_freed_memory(one_arena=size != 28)
    use_cpu_cores(_CPU_CORES.value)
    rng = np.random.default_rng(0)
    shape = (size, size) if size == 28 else (size, size, 3)
    count = NUM_EXAMPLES if size == 28 else 4 * _BATCH.value
    random = data.Split(rng.integers(0, 256, (count, *shape), dtype=np.uint8), rng.integers(0, 10, count, np.int32))
    splits = data.Splits(train=random, validation=None, test=random)
    variants: dict[str, Callable[[], Runner | TorchRunner]] = {
        NO_BN: lambda: Runner(_config(False, "paper"), splits),
        "BN, paper VJP (default)": lambda: Runner(_config(True, "paper"), splits),
        "BN, XLA's conv gradients": lambda: Runner(_config(True, "paper"), splits, xla_gradients=True),
        "BN, autodiff": lambda: Runner(_config(True, "autodiff"), splits),
        "BN, flax.linen.BatchNorm": lambda: Runner(_config(True, "autodiff"), splits, flax_bn=True),
    }
    if _TORCH_PATH.value:
        sys.path.insert(0, _TORCH_PATH.value)
    if importlib.util.find_spec("torch") is not None:
        import torch  # Only here: torch is not a dependency.

        modes = {"eager": False} | ({"torch.compile": True} if _TORCH_COMPILE.value else {})
        for mode, compiled in modes.items():
            for batch_norm in (False, True):
                name = f"PyTorch {mode}, {'BN' if batch_norm else 'no BN'}"
                variants[name] = functools.partial(
                    TorchRunner, torch, _config(batch_norm, "paper"), random.images, compiled
                )
    runners = {name: make() for name, make in variants.items()}
    for name, runner in runners.items():
        ours = runners[NO_BN if name.endswith(NO_BN) else "BN, autodiff"].num_params
        print(f"{name}: {runner.num_params:,} parameters")
        if runner.num_params != ours:
            raise ValueError(f"{name}: not our net ({runner.num_params:,} parameters, ours {ours:,}).")
    print()
    for runner in runners.values():
        runner.run(3)  # warm-up
    rounds = round_seconds(runners, _STEPS.value, _REPEATS.value)
    print(
        f"JAX {jax.__version__} on {jax.default_backend()}, {_CPU_CORES.value or 'all'} core(s); BN-Inception "
        f"x{_WIDTH.value}, {'small input, 28x28x1' if size == 28 else f'{size}x{size}x3'}, batch {_BATCH.value}; "
        f"{_STEPS.value} steps per variant and round, best of {_REPEATS.value} interleaved rounds; "
        f"load average {os.getloadavg()[0]:.1f}\n"
    )
    print(markdown_table({name: r.compile_s for name, r in runners.items()}, rounds, _STEPS.value))


if __name__ == "__main__":
    app.run(main)
