"""A sweep's vmapped groups (`bnrepro.sweep.group`): models that differ only in seed and learning rate, stacked
into one program by the training loop a single run uses, each ending as it would alone."""

import json
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from training_run import small_config, train_and_evaluate

from bnrepro.sweep.group import check_group, train_group
from bnrepro.training.loop import DivergedError, OnDeviceSteps
from bnrepro.training.run_dir import CHECKPOINT_DIR, DIVERGED_FILE, METRICS_FILE
from bnrepro.training.state import TrainState

GROUP = ({"seed": 0, "learning_rate": 0.1}, {"seed": 1, "learning_rate": 0.1}, {"seed": 0, "learning_rate": 0.5})


def _records(workdir: Path) -> list[dict]:
    return [json.loads(line) for line in (workdir / METRICS_FILE).read_text().splitlines()]


def test_a_group_trains_each_model_as_it_would_alone(small_fake_mnist: Path, tmp_path: Path) -> None:
    configs = [small_config(data_dir=str(small_fake_mnist), **point) for point in GROUP]
    workdirs = [tmp_path / f"group_{i}" for i in range(len(GROUP))]
    together = train_group(configs, workdirs)
    for i, config in enumerate(configs):
        alone = train_and_evaluate(config, tmp_path / f"alone_{i}")
        for tree_alone, tree_together in (
            (alone.params, together[i].params),
            (alone.batch_stats, together[i].batch_stats),
        ):
            jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5), tree_alone, tree_together)
        for a, b in zip(_records(tmp_path / f"alone_{i}"), _records(workdirs[i]), strict=True):
            assert a["step"] == b["step"]
            assert a["test_accuracy"] == pytest.approx(b["test_accuracy"], abs=1 / 300 + 1e-9)  # one example
            assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-4)
            assert a["p50"] == pytest.approx(b["p50"], rel=1e-3, abs=1e-4)
    # The models differ: seeds give other initial weights and data orders, rates other trajectories.
    kernels = [np.asarray(s.params["DenseBN_0"]["Dense_0"]["kernel"]) for s in together]
    assert not np.allclose(kernels[0], kernels[1]) and not np.allclose(kernels[0], kernels[2])
    assert ocp.CheckpointManager((workdirs[1] / CHECKPOINT_DIR).absolute()).latest_step() == 60


def test_a_diverging_model_stops_alone(small_fake_mnist: Path, tmp_path: Path) -> None:
    points = [{"learning_rate": 0.1}, {"learning_rate": 1e5}]
    configs = [
        small_config("baseline", data_dir=str(small_fake_mnist), **p, model={"activation": "relu"}) for p in points
    ]
    results = train_group(configs, [tmp_path / "fine", tmp_path / "diverged"])
    assert isinstance(results[1], DivergedError) and (tmp_path / "diverged" / DIVERGED_FILE).exists()
    assert not (tmp_path / "diverged" / METRICS_FILE).exists()  # diverged before its first evaluation
    assert isinstance(results[0], TrainState) and int(results[0].step) == 60
    assert [r["step"] for r in _records(tmp_path / "fine")] == [20, 40, 60]


def test_a_resumed_group_equals_an_uninterrupted_one(small_fake_mnist: Path, tmp_path: Path) -> None:
    configs = [small_config(data_dir=str(small_fake_mnist), **point) for point in GROUP[:2]]
    whole = train_group(configs, [tmp_path / "whole_0", tmp_path / "whole_1"])
    halves = [c.copy_and_resolve_references() for c in configs]
    for config in halves:  # checkpoints at step 20 by the clock alone (none yet), its next decision 10^6 s away
        config.num_steps, config.checkpoint_every, config.checkpoint_every_seconds = 40, 10**6, 10**6
    train_group(halves, [tmp_path / "split_0", tmp_path / "split_1"])
    for half in ("split_0", "split_1"):  # one decision for the group: every model saved at step 20
        assert ocp.CheckpointManager((tmp_path / half / CHECKPOINT_DIR).absolute()).all_steps() == [20, 40]
    with pytest.raises(ValueError, match=r"checkpoints are at different steps \[40, 60\]"):
        train_group(configs, [tmp_path / "split_0", tmp_path / "whole_1"])
    resumed = train_group(configs, [tmp_path / "split_0", tmp_path / "split_1"])  # the refusal changed nothing
    for a, b in zip(whole, resumed, strict=True):
        jax.tree.map(np.testing.assert_array_equal, a.params, b.params)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"batch_size": 30}, r"config\.batch_size: models trained as a group may differ only in \['seed', "),
        ({"model": {"activation": "relu"}}, r"config\.model\.activation: models trained as a group"),
        ({"learning_rate": 0.2, "lr_decay_rate": 0.5}, r"config\.lr_decay_rate: models trained as a group"),
    ],
)
def test_configs_that_cannot_share_a_program_are_refused(tmp_path: Path, change: dict, message: str) -> None:
    first = small_config()
    second = small_config()
    second.update(change)
    with pytest.raises(ValueError, match=message):
        train_group([first, second], [tmp_path / "a", tmp_path / "b"])


def test_a_decaying_learning_rate_must_be_shared(tmp_path: Path) -> None:
    first, second = small_config(lr_decay_rate=0.5, lr_decay_steps=10), small_config(lr_decay_rate=0.5)
    second.update(learning_rate=0.2, lr_decay_steps=10)
    with pytest.raises(ValueError, match=r"config\.learning_rate: a group with a learning-rate decay must share"):
        check_group([first, second])


@pytest.mark.skipif(jax.device_count() < 8, reason="needs 8 (simulated) devices")
def test_a_group_split_across_devices_trains_as_on_one(
    small_fake_mnist: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    points = [{"seed": seed, "learning_rate": lr} for seed in (0, 1, 2, 3) for lr in (0.1, 0.5)]
    shardings, train_chunk = [], OnDeviceSteps.train

    def recording_shardings(self, state, max_steps):  # of the stacked kernels, before and after each program
        chunk = train_chunk(self, state, max_steps)
        shardings.extend(s.params["DenseBN_0"]["Dense_0"]["kernel"].sharding for s in (state, chunk.state))
        return chunk

    monkeypatch.setattr(OnDeviceSteps, "train", recording_shardings)
    results = {}
    for devices in (1, 8):
        configs = [small_config(data_dir=str(small_fake_mnist), num_devices=devices, **p) for p in points]
        results[devices] = train_group(configs, [tmp_path / f"{devices}_{i}" for i in range(len(points))])
    # The 8-device run kept the 8 models' stacked states split across the devices, one model each.
    split = [sh for sh in shardings if sh.num_devices == 8]
    assert len(split) == len(shardings) // 2 and all(sh.spec == jax.sharding.PartitionSpec("models") for sh in split)
    for one, eight in zip(results[1], results[8], strict=True):
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), one.params, eight.params)
    with pytest.raises(ValueError, match=r"a group of 3 models: does not split evenly across 8 devices"):
        configs = [small_config(data_dir=str(small_fake_mnist), num_devices=8, seed=s) for s in range(3)]
        train_group(configs, [tmp_path / f"odd_{i}" for i in range(3)])
