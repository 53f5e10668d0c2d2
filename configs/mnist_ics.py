r"""Gradient propagation and internal covariate shift (Santurkar et al. 2018) on the Figure 1 MLP.

    python -m bnrepro.main --config=configs/mnist_ics.py:sigmoid,bn --workdir=runs/ics/sigmoid_bn
    python -m bnrepro.main --config=configs/mnist_ics.py:relu,noisy_bn --workdir=runs/ics/relu_noisy_bn
    python scripts/plot_ics.py runs/ics/* --out=ics.png

All six nets, 3 seeds each, as one sweep: `configs/sweeps/mnist_ics.py`.

The argument is `ACTIVATION,NORM`: ACTIVATION sigmoid or relu; NORM `none` (the baseline g(Wu + b)), `bn`
(g(BN(Wu))) or `noisy_bn` (BN followed by a fresh random scale ~ U(1, 2) and shift ~ U(-1, 1) per activation
at every step, Santurkar et al.'s Sec. 2.1 experiment: BN with the covariate shift put back). Everything else
is `configs/mnist_mlp.py`'s (SGD at 0.1 on mini-batches of 60), 10,000 steps, and every 250 steps
`bnrepro.diagnostics.measure` records into `diagnostics.jsonl`, per hidden layer: ICS ||G - G'|| and
cos(G, G'), the gradient norm, the singular values of the layer's Jacobian; and the loss landscape along the
gradient at 0.5, 1, 2 and 4 times the learning rate (loss variation, gradient predictiveness, effective
beta-smoothness). The noise magnitudes are our choice (Santurkar et al. give no numbers for theirs).

Results and their reading: docs/experiments.md#gradient-propagation.
"""

import ml_collections

from configs import mnist_mlp

ACTIVATIONS = ("sigmoid", "relu")
NORMS = ("none", "bn", "noisy_bn")
NOISE_SHIFT, NOISE_SCALE = 1.0, 2.0  # noisy BN: shift ~ U(-1, 1), scale ~ U(1, 2), per activation and step
# Each NORM as overrides of `configs/mnist_mlp.py`'s model (also the sweep's points).
NORM_OVERRIDES = {
    "none": {"model.batch_norm": False, "model.bn.noise_shift": 0.0, "model.bn.noise_scale": 1.0},
    "bn": {"model.batch_norm": True, "model.bn.noise_shift": 0.0, "model.bn.noise_scale": 1.0},
    "noisy_bn": {"model.batch_norm": True, "model.bn.noise_shift": NOISE_SHIFT, "model.bn.noise_scale": NOISE_SCALE},
}


def get_config(arg: str = "sigmoid,bn") -> ml_collections.ConfigDict:
    """The `ACTIVATION,NORM` net with Santurkar et al.'s measurements on."""
    activation, _, norm = arg.partition(",")
    if activation not in ACTIVATIONS or norm not in NORMS:
        raise ValueError(
            f"configs/mnist_ics.py: bad argument {arg!r}; expected ACTIVATION,NORM with ACTIVATION one of "
            f"{ACTIVATIONS} and NORM one of {NORMS}."
        )
    config = mnist_mlp.get_config("bn")
    config.model.activation = activation
    config.update_from_flattened_dict(NORM_OVERRIDES[norm])
    config.num_steps = 10_000
    config.eval_every = 1000
    config.checkpoint_every = 5000
    config.diagnostics_every = 250
    return config
