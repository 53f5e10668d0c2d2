"""The training loop, split by responsibility; read `loop.py` first, it is the algorithm top to bottom.

* `state.py`    -- `TrainState`, the model's initial state, the optimizer (SGD/RMSProp, decay, clipping), the loss.
* `steps.py`    -- pure, jittable steps: one SGD step, K steps fused on an on-device dataset, the ONE evaluation
                   step, and Algorithm 2's population statistics for a whole model.
* `inputs.py`   -- the `Input` protocol and its two kinds: `OnDeviceInput` (MNIST-size sets on the device, epoch
                   permutations drawn there) and `HostFedInput` (ImageNet, a grain pipeline on the host).
* `device_data.py` -- the on-device training set (`Dataset`) and each epoch's permutation of it.
* `sharding.py` -- `ModelLayout`: how the models a state holds, and each mini-batch, sit on the devices.
* `run_dir.py`  -- a run directory's files: their names, the metrics writer, `config.json` and the guard that
                   refuses to resume under another config. Imports neither jax nor orbax, so notebooks and
                   figures read run directories without the trainer.
* `checkpoints.py` -- orbax checkpoints: save, and restore the latest.
* `hooks.py`    -- what a caller may add to the loop: extra evaluation outputs and measurements every N steps.
* `loop.py`     -- `train_and_evaluate`: the loop with evaluation, metrics, checkpoints and resumption.

This package imports nothing at import time: `import bnrepro.training.run_dir` stays light.
"""
