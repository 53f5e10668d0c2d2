"""AdaBN (Li et al. 2016) on a trained run: its test accuracy under domain shifts of the test images, with the
source domain's BN statistics ("source only") and with statistics re-estimated on the shifted images (AdaBN),
all weights unchanged. One of the paper's open questions (Sec. 5): does BN help domain adaptation?

    python scripts/adabn.py --workdir=runs/mnist_bn [--shifts=inverted,rotated,noisy,low_contrast]

WORKDIR and each of its seeds' siblings (`runs/mnist_bn_seed1`, ...: `bnrepro.figures.seed_dirs`, as Figure 1's
command trains them) are adapted; each run's config and latest checkpoint are read from its directory. Source statistics are Algorithm 2's over the
first `population_batches` training mini-batches (as the run evaluated); AdaBN's are over the shifted test
images themselves, unlabelled, in mini-batches of the run's `batch_size` (transductive, as Li et al.). The
shifts are in `bnrepro.data.shifts`. Prints each run's table and writes it to its directory's adabn.md, then,
with seeds, the mean ± std over them (`bnrepro.figures.adabn_table`).

Results (Figure 1's BN net, 3 seeds): docs/experiments.md#adabn.
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

from bnrepro import data, figures, layers, models
from bnrepro.data import shifts
from bnrepro.training.run_dir import CHECKPOINT_DIR, CONFIG_FILE
from bnrepro.training.state import preprocess

_WORKDIR = flags.DEFINE_string("workdir", None, "A trained run directory (config.json, checkpoints/).")
_SHIFTS = flags.DEFINE_list("shifts", list(shifts.SHIFTS), f"Domain shifts, of {list(shifts.SHIFTS)}.")


def accuracy(model, variables: dict, images: jax.Array, labels: np.ndarray) -> float:
    logits = jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, images)
    return float(np.mean(np.argmax(logits, -1) == labels))


def adapt(workdir: Path, shift_names: list[str]) -> dict[str, tuple[float, float]]:
    """Test accuracy of the run in `workdir` on the test images and each of `shift_names`' shifts of them: with
    the source statistics, and with AdaBN's re-estimated on the shifted images."""
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
    result = {}
    for name in ["none", *shift_names]:
        images = splits.test.images if name == "none" else shifts.SHIFTS[name](splits.test.images)
        target = preprocess(jnp.asarray(images))
        source_only = accuracy(model, variables, target, splits.test.labels)
        adapted = accuracy(model, layers.adapt_to_domain(model, variables, target, config.batch_size), target,
                           splits.test.labels)  # fmt: skip
        result[name] = (source_only, adapted)
    print(f"AdaBN on {workdir} (seed {config.seed}, step {checkpoints.latest_step()}, {config.dataset}):")
    return result


def main(argv: list[str]) -> None:
    del argv
    unknown = sorted(set(_SHIFTS.value) - set(shifts.SHIFTS))
    if unknown:
        raise app.UsageError(f"--shifts: unknown {unknown}; known: {list(shifts.SHIFTS)}.")
    workdir = Path(_WORKDIR.value)
    results = []
    for run in figures.seed_dirs(workdir.parent, workdir.name) or [workdir]:
        results.append(adapt(run, _SHIFTS.value))
        table = figures.adabn_markdown(results[-1])
        print(table)
        (run / figures.ADABN_FILE).write_text(table + "\n")
    if len(results) > 1:
        print(f"\nAdaBN over {len(results)} seeds (mean ± std):\n{figures.adabn_table(results)}")


if __name__ == "__main__":
    flags.mark_flags_as_required(["workdir"])
    app.run(main)
