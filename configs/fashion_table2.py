r"""A CPU-scale analogue of Table 2 (Sec. 4.2): a scaled BN-Inception on Fashion-MNIST in the paper's six runs.

    python -m bnrepro.main --config=configs/fashion_table2.py:bn_x5 --workdir=runs/table2/bn_x5
    python scripts/table2.py --workdir=runs/table2            # all six runs, then the table
    python scripts/table2.py --workdir=runs/table2_quick --quick   # the smoke version: all six in ~1 minute

Variants (`get_config("VARIANT")`, or `"VARIANT,quick"` for the smoke version: the net cut after module 3c,
100 steps, evaluated on the first 1,000 test examples; ~20 s a run on one core, a test of the pipeline, not a
result):
    inception       no BN, ReLU, dropout 0.4 before the classifier, LRN, base learning rate and decay
    bn_baseline     inception + BN before every nonlinearity (conv biases dropped), nothing else changed
    bn_x5           bn_baseline with Sec. 4.2.1's accelerations: learning rate x5, no dropout, L2 weight decay
                    / 5, learning-rate decay 6x faster, no LRN
    bn_x30          bn_x5 with learning rate x30
    bn_x5_sigmoid   bn_x5 with sigmoid nonlinearities
    sigmoid         inception with sigmoid nonlinearities and no BN (the paper: never better than chance)

The scaled net: BN-Inception of the Figure 5 table with every width x0.125 and the small-input stem (stride
1, no first max pool: 28 -> 28, 14 at module 3, 7 after 3c, 4 after 4e); 28x28x1 input, 10 classes.
SGD with momentum 0.9 on mini-batches of 32 (the paper's per-replica size), 3000 steps (1.6 epochs).
Not carried over: the paper's within-shard shuffling (every epoch here is a fresh global permutation of
the on-device set, already the "thorough" shuffling) and photometric distortions (none for Fashion-MNIST).
Not in the paper, chosen here: the base learning rate 0.01, weight decay 4e-5 (TF-slim's Inception),
exponential decay by 0.5 every 6000 steps (every 1000 steps for the accelerated runs).

Results and their reading (and a 4x longer schedule for BN-x5 against BN-x30):
docs/experiments.md#table-2-at-cpu-scale; the paper's numbers: `bnrepro/report/experiments.py`.
"""

import ml_collections

from bnrepro import models

VARIANTS = ("inception", "bn_baseline", "bn_x5", "bn_x30", "bn_x5_sigmoid", "sigmoid")
BASE_LEARNING_RATE, BASE_DECAY_STEPS = 0.01, 6000


def get_config(arg: str = "bn_x5") -> ml_collections.ConfigDict:
    """`arg` is a variant, optionally followed by `,quick`."""
    variant, *options = arg.split(",")
    if variant not in VARIANTS or set(options) - {"quick"}:
        raise ValueError(f"configs/fashion_table2.py: bad argument {arg!r}; expected one of {VARIANTS}[,quick].")
    batch_norm = variant.startswith("bn_")
    accelerated = variant in ("bn_x5", "bn_x30", "bn_x5_sigmoid")
    config = ml_collections.ConfigDict()
    config.dtype = "float32"  # activations, matmuls, convs: float32 or bfloat16 (weights, BN statistics, loss: float32)

    config.model = ml_collections.ConfigDict()
    config.model.name = "bn_inception"  # bnrepro.models.MODELS
    config.model.num_classes = 10
    config.model.small_input = True  # stride-1 stem without its first max pool, for 28x28 images
    config.model.width_multiplier = 0.125  # every conv's channels x0.125
    config.model.batch_norm = batch_norm  # BN before every nonlinearity, conv biases dropped
    config.model.activation = "sigmoid" if variant in ("sigmoid", "bn_x5_sigmoid") else "relu"
    config.model.dropout_rate = 0.0 if accelerated else 0.4  # Sec. 4.2.1: remove dropout
    config.model.lrn = not accelerated  # Sec. 4.2.1: remove local response normalization
    config.model.bn = models.bn_config()  # every BN layer's options (bnrepro.layers.BatchNorm): its defaults

    config.dataset = "fashion_mnist"
    config.data_source = "offline"  # the IDX files of Debian's dataset-fashion-mnist, fetched into the data cache
    config.data_dir = ""
    config.validation_size = 0

    config.num_steps = 3000
    config.batch_size = 32
    multiplier = {"bn_x5": 5, "bn_x5_sigmoid": 5, "bn_x30": 30}.get(variant, 1)
    config.learning_rate = BASE_LEARNING_RATE * multiplier  # Sec. 4.2.1: increase the learning rate
    config.optimizer = "sgd"
    config.momentum = 0.9
    config.weight_decay = 4e-5 / (5 if accelerated else 1)  # Sec. 4.2.1: reduce the L2 weight decay by 5x
    config.lr_decay_rate = 0.5
    config.lr_decay_steps = BASE_DECAY_STEPS // (6 if accelerated else 1)  # Sec. 4.2.1: decay 6x faster
    config.grad_clip_norm = 0.0
    config.seed = 0

    config.eval_every = 250
    config.eval_examples = 0  # the whole test set, 10,000 examples
    config.eval_train_examples = 0  # training examples also evaluated (train_accuracy), the first ones; 0 = off
    config.eval_statistics = "population"
    config.population_batches = 20
    config.plot_layer = ""  # no Figure 1 percentiles for this net
    config.plot_unit = 0
    config.diagnostics_every = 0  # Santurkar et al.'s measurements (bnrepro.diagnostics) are off
    config.diagnostics_layers = ()
    config.diagnostics_step_scales = (0.5, 1.0, 2.0, 4.0)
    config.weight_norms_every = 0  # steps between records of each layer's ||W|| in weight_norms.jsonl (0 = off)
    config.steps_per_dispatch = 1  # XLA:CPU runs convolutions ~15x slower inside a fused (while) loop
    config.checkpoint_every = 1000
    config.checkpoint_every_seconds = 300  # and every 5 minutes: a run takes ~30 on a CPU core; a kill loses 5 at most
    config.cpu_cores = 1
    config.num_devices = 1
    config.profile_steps = ""  # "START:END": a jax.profiler trace of those steps into WORKDIR/plugins/profile

    if "quick" in options:  # a smoke test: fewer steps, evaluated on 1,000 test examples with 5 population batches
        config.num_steps, config.eval_every, config.checkpoint_every = 100, 50, 100
        config.checkpoint_every_seconds = 0  # a 20-second run: its end's checkpoint is enough
        config.eval_examples, config.population_batches = 1000, 5
        config.model.num_modules = 3  # 3a, 3b, 3c: a third of the convolutions, a third of the compile time
    config.lock()
    return config
