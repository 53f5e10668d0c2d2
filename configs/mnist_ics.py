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

Measured (CPU, `configs/sweeps/mnist_ics.py`: 80 s for all 18 runs on 2 idle cores; the table below is from a rerun
on a shared core, 1040 s): the last hidden layer's quantities averaged over the second half of training (steps
5,250-10,000), mean ± std over 3 seeds (`python scripts/plot_ics.py runs/sweeps/ics` prints all digits):

    net                ICS ||G-G'||     cos(G,G')       grad norm       accuracy
    relu, no BN        0.047 ± 0.006    0.917 ± 0.031   0.081 ± 0.009   97.53% ± 0.05%
    relu, BN           0.016 ± 0.001    0.989 ± 0.001   0.058 ± 0.002   97.88% ± 0.06%
    relu, noisy BN     0.146 ± 0.020    0.913 ± 0.020   0.264 ± 0.022   97.65% ± 0.27%
    sigmoid, no BN     0.022 ± 0.002    0.993 ± 0.001   0.137 ± 0.003   94.70% ± 0.13%
    sigmoid, BN        0.063 ± 0.006    0.981 ± 0.003   0.176 ± 0.014   96.69% ± 0.07%
    sigmoid, noisy BN  0.101 ± 0.007    0.959 ± 0.005   0.238 ± 0.026   95.80% ± 1.64%

    net                loss variation    grad. predictiveness  beta-smoothness  Jacobian sv
    relu, no BN        0.026 ± 0.020     0.44 ± 0.11           5.5 ± 0.2        0.56 ± 0.03
    relu, BN           0.0055 ± 0.0016   0.11 ± 0.01           3.4 ± 0.3        0.85 ± 0.01
    relu, noisy BN     0.049 ± 0.006     0.68 ± 0.05           8.0 ± 0.4        0.54 ± 0.02
    sigmoid, no BN     0.049 ± 0.003     0.33 ± 0.03           2.0 ± 0.1        0.22 ± 0.003
    sigmoid, BN        0.031 ± 0.004     0.42 ± 0.04           4.4 ± 0.1        1.04 ± 0.02
    sigmoid, noisy BN  0.054 ± 0.010     0.61 ± 0.03           5.6 ± 0.1        0.73 ± 0.02

Noisy BN has 1.6-8.9x the ICS of BN and still trains about as well as BN (and better than no BN with the sigmoid,
though one of its 3 sigmoid seeds ends at 93.9%): Santurkar et al.'s point that BN's benefit is not less ICS. With
ReLU, BN's landscape is the smoother one (loss variation /4.7, gradient predictiveness /3.9, beta-smoothness /1.6),
by many standard deviations. With the sigmoid only the loss variation is smaller with BN (0.031 vs 0.049);
gradient predictiveness and beta-smoothness are larger, the baseline's saturated units (Jacobian singular values
~0.2) giving small gradients that change little. BN brings the layer Jacobian's singular values towards 1 (0.22 ->
1.04 sigmoid, 0.56 -> 0.85 ReLU), as Sec. 3.3 of the paper conjectures; noisy BN's random scales pull them back.
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
