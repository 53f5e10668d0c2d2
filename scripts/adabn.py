"""AdaBN (Li et al. 2016) on a trained run: its test accuracy under domain shifts of the test images, with the
source domain's BN statistics ("source only") and with statistics re-estimated on the shifted images (AdaBN),
all weights unchanged. One of the paper's open questions (Sec. 5): does BN help domain adaptation?

    python scripts/adabn.py --workdir=runs/mnist_bn [--shifts=inverted,rotated,noisy,low_contrast]

The run's config and latest checkpoint are read from WORKDIR. Source statistics are Algorithm 2's over the
first `population_batches` training mini-batches (as the run evaluated); AdaBN's are over the shifted test
images themselves, unlabelled, in mini-batches of the run's `batch_size` (transductive, as Li et al.). The
shifts are in `bnrepro.data.shifts`. Prints the table and writes it to WORKDIR/adabn.md.
"""

from __future__ import annotations

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from absl import app, flags

from bnrepro import data, layers, models
from bnrepro.data import shifts
from bnrepro.training.run_dir import CHECKPOINT_DIR, CONFIG_FILE
from bnrepro.training.state import preprocess

_WORKDIR = flags.DEFINE_string("workdir", None, "A trained run directory (config.json, checkpoints/).")
_SHIFTS = flags.DEFINE_list("shifts", list(shifts.SHIFTS), f"Domain shifts, of {list(shifts.SHIFTS)}.")


def accuracy(model, variables: dict, images: jax.Array, labels: np.ndarray) -> float:
    logits = jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, images)
    return float(np.mean(np.argmax(logits, -1) == labels))


def main(argv: list[str]) -> None:
    del argv
    workdir = Path(_WORKDIR.value)
    unknown = sorted(set(_SHIFTS.value) - set(shifts.SHIFTS))
    if unknown:
        raise app.UsageError(f"--shifts: unknown {unknown}; known: {list(shifts.SHIFTS)}.")
    config = ml_collections.ConfigDict(json.loads((workdir / CONFIG_FILE).read_text()))
    checkpoints = ocp.CheckpointManager((workdir / CHECKPOINT_DIR).absolute())
    if checkpoints.latest_step() is None:
        raise FileNotFoundError(f"{workdir / CHECKPOINT_DIR}: no checkpoint; is {workdir} a trained run?")
    saved = checkpoints.restore(checkpoints.latest_step(), args=ocp.args.StandardRestore())
    if not saved["batch_stats"]:
        raise ValueError(f"{workdir}: the model has no BN layer, so there are no statistics to adapt.")
    model = models.create_model(config.model, config.dtype)
    splits = data.load_dataset(config.dataset, config.data_source, data_dir=config.data_dir or None)
    source = preprocess(jnp.asarray(splits.train.images[: config.population_batches * config.batch_size]))
    variables = layers.adapt_to_domain(model, {"params": saved["params"], "batch_stats": saved["batch_stats"]},
                                       source, config.batch_size)  # fmt: skip

    lines = ["| test images | source statistics | AdaBN | change |", "|---|---|---|---|"]
    for name in ["none", *_SHIFTS.value]:
        images = splits.test.images if name == "none" else shifts.SHIFTS[name](splits.test.images)
        target = preprocess(jnp.asarray(images))
        source_only = accuracy(model, variables, target, splits.test.labels)
        adapted = accuracy(model, layers.adapt_to_domain(model, variables, target, config.batch_size), target,
                           splits.test.labels)  # fmt: skip
        lines.append(f"| {name} | {source_only:.2%} | {adapted:.2%} | {100 * (adapted - source_only):+.2f} |")
    table = "\n".join(lines)
    print(f"AdaBN on {workdir} (step {checkpoints.latest_step()}, {config.dataset}):\n{table}")
    (workdir / "adabn.md").write_text(table + "\n")


if __name__ == "__main__":
    flags.mark_flags_as_required(["workdir"])
    app.run(main)
