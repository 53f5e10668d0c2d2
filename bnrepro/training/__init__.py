"""The training loop, split by responsibility; read `loop.py` first, it is the algorithm top to bottom.

* `state.py`    -- `TrainState`, the model's initial state, the optimizer (SGD/RMSProp, decay, clipping), the loss.
* `steps.py`    -- pure, jittable steps: one SGD step, K steps fused over an index window of an on-device
                   dataset, the ONE evaluation step, and Algorithm 2's moments of a mini-batch and their population.
* `evaluation.py` -- the ONE evaluation: the evaluation step over an iterator of test batches, with Algorithm 2's
                   population statistics of an iterator of training mini-batches, whatever the data's placement.
* `inputs.py`   -- the data, and only that: `OnDeviceData` (MNIST-size sets on the device; index windows for the
                   fused steps) and `HostFedData` (ImageNet, a grain pipeline on the host; mini-batches).
* `device_data.py` -- the on-device training set (`Dataset`), each epoch's permutation of it, a test set's batches.
* `sharding.py` -- `ModelLayout`: how the models a state holds, and each mini-batch, sit on the devices.
* `run_dir.py`  -- a run directory's files: their names, the metrics writer, `config.json` and the guard that
                   refuses to resume under another config. Imports neither jax nor orbax, so notebooks and
                   figures read run directories without the trainer.
* `checkpoints.py` -- orbax checkpoints: save, and restore the latest.
* `loop.py`     -- `train_and_evaluate`: compiles the programs, and runs them: the training steps (`OnDeviceSteps`,
                   `HostFedSteps`), evaluation, the hooks' measurements (`bnrepro.hooks`), metrics, checkpoints and
                   resumption.

This package imports nothing at import time: `import bnrepro.training.run_dir` stays light.
"""
