r"""Table 2's "Inception" run (Sec. 4.2): the BN-Inception architecture without BN, on ImageNet, LR 0.0015.

    python -m bnrepro.main --config=configs/imagenet_inception.py --workdir=runs/imagenet/inception
    python -m bnrepro.main --config=configs/imagenet_inception.py:16 --workdir=...   # 16 replicas (e.g. 2 hosts)

The paper's numbers (single-crop top-1 validation accuracy, steps in mini-batches of 32):
`bnrepro/report/experiments.py` (the results page); docs/experiments.md#table-2-on-imagenet. This file also
holds what the five ImageNet runs share; `imagenet_bn_baseline.py`, `imagenet_bn_x5.py`, `imagenet_bn_x30.py` and
`imagenet_bn_x5_sigmoid.py` change a few lines each (`with_batch_norm`, `accelerated`).

Data: tfds `imagenet2012`, prepared once in ArrayRecord format from the manual download (the run's first error
says where to put the two tars and which `tfds build` command to run); `--config.data_dir` is tfds's data_dir.

The argument is the number of replicas R (default 8: one 8-GPU host or a TPU v3-8): the paper trains "with
mini-batches of 32" on many replicas, so the global batch is 32 R, split across `num_devices` devices (all of
them by default; add hosts with `jax.distributed`, see docs/runs.md#imagenet). Where the paper is silent, chosen here:
  * Replicas are synchronous. The paper's replicas each apply their own gradient of 32 examples at rate lr;
    one synchronous step of 32 R examples moves the weights as far with rate R lr (the mean gradient), so the
    learning rate is the paper's times R. A step here is R of the paper's mini-batches: divide Table 2's
    "steps" by R to compare.
  * BN normalizes each replica's 32 examples on their own (`model.bn.virtual_batch_size = 32`), as the paper's
    replicas did; the population statistics for inference are Algorithm 2's.
  * SGD with momentum 0.9, L2 weight decay 4e-5 on the convolution and classifier weights, learning rate
    decayed by 0.94 every 2 epochs (TF-slim's Inception training values; the paper: "decayed exponentially").
  * The original Inception's input pipeline: the examples' order is shuffled only by shard (tfds's 1024 files
    read in a random order, each in its stored order; Sec. 4.2.1's "more thorough shuffling" is the
    accelerated runs' within-shard shuffle), the full photometric distortion, 224x224 random-size crops.
  * Length: Figure 2's horizontal axis, 31e6 mini-batches of 32; evaluation on the 50,000 validation images
    every epoch.
"""

import ml_collections

from bnrepro import models

EXAMPLES_PER_REPLICA = 32  # Sec. 4.2: "mini-batch 32"
PAPER_LEARNING_RATE = 0.0015  # Inception's initial learning rate (Sec. 4.2)
TRAIN_EXAMPLES = 1_281_167  # imagenet2012's train split
PAPER_MINIBATCHES = 31_000_000  # Figure 2's horizontal axis: mini-batches of 32


def get_config(arg: str | None = None, config_file: str = "configs/imagenet_inception.py") -> ml_collections.ConfigDict:
    """The Inception run on `arg` replicas (default 8) of 32 examples each; `config_file` names the file
    whose argument it is in errors."""
    if arg and (not arg.isdigit() or int(arg) < 1):
        raise ValueError(f"{config_file}: bad argument {arg!r}; expected a number of replicas, e.g. 8.")
    replicas = int(arg) if arg else 8
    config = ml_collections.ConfigDict()
    config.dtype = "float32"  # activations, matmuls, convs: float32 or bfloat16 (weights, BN statistics, loss: float32)

    config.model = ml_collections.ConfigDict()
    config.model.name = "bn_inception"  # the Figure 5 network (bnrepro.models.inception)
    config.model.num_classes = 1000
    config.model.batch_norm = False  # the Inception run: no BN, conv biases kept
    config.model.activation = "relu"
    config.model.dropout_rate = 0.4  # the original Inception's 40% dropout before the classifier
    config.model.lrn = True  # the original Inception's local response normalization
    config.model.bn = models.bn_config()  # every BN layer's options (bnrepro.layers.BatchNorm), its defaults but:
    config.model.bn.virtual_batch_size = EXAMPLES_PER_REPLICA  # with BN: each replica's 32 examples on their own

    config.dataset = "imagenet2012"
    config.data_source = "tfds"
    config.data_dir = ""  # tfds's default data_dir (~/tensorflow_datasets)
    config.validation_size = 0
    config.input = ml_collections.ConfigDict()
    config.input.image_size = 224
    config.input.shuffle = "shard_order"  # the files' order shuffled, not the examples inside them
    config.input.distortion = "full"  # Inception's photometric distortions
    config.input.train_split = "train"
    config.input.eval_split = "validation"  # single-crop top-1 on the 50,000 validation images
    config.input.eval_batch_size = 32 * replicas
    # grain reader threads in each worker process (in this process if worker_count is 0). One per worker reads the
    # most images per core, as many as a torch DataLoader's; 16 threads each spent ~25% more CPU per image on the
    # GIL (scripts/bench_input.py).
    config.input.read_threads = 1
    config.input.prefetch_buffer_size = 500  # examples
    config.input.worker_count = 16  # grain worker processes per host, each reading whole batches (0: this process)

    config.batch_size = EXAMPLES_PER_REPLICA * replicas
    steps_per_epoch = TRAIN_EXAMPLES // config.batch_size
    config.num_steps = PAPER_MINIBATCHES // replicas
    config.learning_rate = PAPER_LEARNING_RATE * replicas  # synchronous replicas, see the docstring
    config.optimizer = "sgd"
    config.momentum = 0.9
    config.weight_decay = 4e-5
    config.lr_decay_rate = 0.94
    config.lr_decay_steps = 2 * steps_per_epoch  # every 2 epochs
    config.grad_clip_norm = 0.0
    config.seed = 0

    config.eval_every = steps_per_epoch
    config.eval_examples = 0  # all 50,000
    config.eval_train_examples = 0  # host-fed data: 0 only
    config.eval_statistics = "population"  # Algorithm 2 (without BN there is nothing to estimate)
    config.population_batches = 50  # global mini-batches of 32 R: 400 of the paper's mini-batches for R = 8
    config.plot_layer = ""
    config.plot_unit = 0
    config.diagnostics_every = 0  # Santurkar et al.'s measurements (bnrepro.diagnostics) are off
    config.diagnostics_layers = ()
    config.diagnostics_step_scales = (0.5, 1.0, 2.0, 4.0)
    config.weight_norms_every = 0  # steps between records of each layer's ||W|| in weight_norms.jsonl (0 = off)
    config.steps_per_dispatch = 100  # steps between reading the losses back (the loop checks them for NaN)
    config.checkpoint_every = 5000
    config.checkpoint_every_seconds = 300  # and every 5 minutes: a kill (a preempted VM) loses at most that
    config.cpu_cores = 0  # all
    config.num_devices = 0  # all devices of all hosts
    config.profile_steps = ""  # "START:END": a jax.profiler trace of those steps into WORKDIR/plugins/profile
    config.lock()
    return config


def with_batch_norm(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """BN-Baseline: the same run with BN before every nonlinearity (conv biases dropped), nothing else changed."""
    config.model.batch_norm = True
    return config


def accelerated(config: ml_collections.ConfigDict, learning_rate_multiplier: float) -> ml_collections.ConfigDict:
    """Sec. 4.2.1's changes for BN networks ("Accelerating BN Networks"), applied to the BN-Baseline config."""
    config.learning_rate *= learning_rate_multiplier  # increase the learning rate
    config.model.dropout_rate = 0.0  # remove dropout
    config.weight_decay /= 5  # reduce the L2 weight regularization by a factor of 5
    config.lr_decay_steps //= 6  # accelerate the learning rate decay: 6 times faster
    config.model.lrn = False  # remove local response normalization
    config.input.shuffle = "within_shard"  # shuffle training examples more thoroughly
    config.input.distortion = "reduced"  # reduce the photometric distortions
    return config
