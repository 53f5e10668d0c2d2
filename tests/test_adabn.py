"""AdaBN (issue 7, part 3): `layers.adapt_to_domain` re-estimates only BN statistics, equal to Algorithm 2 done
by hand in NumPy on the target images; the domain shifts of `bnrepro.data.shifts`; scripts/adabn.py over seeds."""

import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from config_files import mnist_mlp
from training_run import small_config

from bnrepro import figures, layers
from bnrepro.data import shifts
from bnrepro.models import create_model
from bnrepro.training.loop import train_and_evaluate

REPO = Path(__file__).resolve().parent.parent


def test_adapt_to_domain_changes_only_the_statistics_and_they_are_algorithm_2_on_the_target():
    config = mnist_mlp.get_config("bn")
    model = create_model(config.model)
    variables = jax.jit(lambda r, x: model.init(r, x, train=False))(jax.random.key(0), jnp.zeros((4, 28, 28)))
    target = np.asarray(jax.random.uniform(jax.random.key(1), (50, 28, 28)) * 3.0 + 1.0)  # a shifted domain
    adapted = layers.adapt_to_domain(model, variables, jnp.asarray(target), batch_size=20)
    jax.tree.map(np.testing.assert_array_equal, adapted["params"], variables["params"])  # weights kept
    # The first BN layer by hand: K = 2 mini-batches of 20 (the last 10 images fill none), m = 20.
    x = target[:40].reshape(2, 20, -1) @ np.asarray(variables["params"]["DenseBN_0"]["Dense_0"]["kernel"])
    means, variances = x.mean(axis=1), x.var(axis=1)
    stats = adapted["batch_stats"]["DenseBN_0"]["BatchNorm_0"]
    np.testing.assert_allclose(stats["mean"], means.mean(0), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(stats["var"], 20 / 19 * variances.mean(0), rtol=1e-4)
    assert not np.allclose(stats["mean"], variables["batch_stats"]["DenseBN_0"]["BatchNorm_0"]["mean"])
    with pytest.raises(ValueError, match="fill no mini-batch of 64"):
        layers.adapt_to_domain(model, variables, jnp.asarray(target), batch_size=64)


def test_domain_shifts():
    images = np.random.default_rng(0).integers(0, 256, (5, 28, 28), dtype=np.uint8)
    for name, shift in shifts.SHIFTS.items():
        shifted = shift(images)
        assert shifted.shape == images.shape and shifted.dtype == np.uint8, name
        assert not np.array_equal(shifted, images), name
    np.testing.assert_array_equal(shifts.inverted(images), 255 - images.astype(int))
    np.testing.assert_array_equal(shifts.rotated(images, degrees=0.0), images)
    np.testing.assert_array_equal(shifts.rotated(images, degrees=90.0), np.rot90(images, axes=(1, 2)))
    np.testing.assert_array_equal(shifts.noisy(images), shifts.noisy(images))  # a fixed seed
    low = shifts.low_contrast(images)
    assert low.min() >= 110 and low.max() <= 110 + 0.3 * 255 + 1


def test_the_script_adapts_every_seed_of_a_run_and_gives_mean_and_std(small_fake_mnist, tmp_path):
    """scripts/adabn.py on `mnist_bn` adapts it and its seed sibling: with no shift and the source statistics
    each seed scores what its own last evaluation recorded (the same Algorithm 2 statistics), and the summary is
    the mean ± std of the seeds' tables."""
    for seed, name in ((0, "mnist_bn"), (1, "mnist_bn_seed1")):
        train_and_evaluate(small_config("bn", data_dir=str(small_fake_mnist), seed=seed), tmp_path / name)
    # The script as a command, in a process of its own that accepts the fake MNIST's counts.
    accept_fake_mnist = "import bnrepro.data; bnrepro.data.EXPECTED_COUNTS = {'train': 1_200, 'test': 300}"
    run_script = "import runpy; runpy.run_path('scripts/adabn.py', run_name='__main__')"
    argv = f"import sys; sys.argv = ['adabn.py', '--workdir={tmp_path / 'mnist_bn'}', '--shifts=noisy']"
    command = [sys.executable, "-c", f"{accept_fake_mnist}; {argv}; {run_script}"]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    results = []
    for name in ("mnist_bn", "mnist_bn_seed1"):
        results.append(figures.read_adabn(tmp_path / name))
        assert list(results[-1]) == ["none", "noisy"]
        recorded = figures.read_evaluations(tmp_path / name, required=())[-1]["test_accuracy"]
        assert results[-1]["none"][0] == pytest.approx(recorded, abs=0.00005)  # the table's 2 decimals of a %
    noisy = np.array([result["noisy"] for result in results])  # (seeds, source / AdaBN)
    change = 100 * (noisy[:, 1] - noisy[:, 0])
    row = f"| noisy | 2 | {noisy[:, 0].mean():.2%} ± {noisy[:, 0].std(ddof=1):.2%} | "
    row += (
        f"{noisy[:, 1].mean():.2%} ± {noisy[:, 1].std(ddof=1):.2%} | {change.mean():+.2f} ± {change.std(ddof=1):.2f} |"
    )
    assert "AdaBN over 2 seeds (mean ± std):" in done.stdout and row in done.stdout
