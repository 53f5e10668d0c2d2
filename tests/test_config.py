"""The MNIST config file and the training-config contract (`bnrepro.config_schema`)."""

import math
import os
import subprocess
import sys
from pathlib import Path

import ml_collections
import pytest
from config_files import fashion_table2, mnist_mlp

from bnrepro import config_schema

REPO = Path(__file__).resolve().parent.parent


CONTRACT = (
    "model.activation", "model.batch_norm", "model.init_std", "num_steps", "batch_size", "learning_rate", "seed",
    "eval_every", "dataset", "data_source",
)  # fmt: skip


def _get(config: ml_collections.ConfigDict, dotted: str):
    for key in dotted.split("."):
        config = config[key]
    return config


def _modified(config: ml_collections.ConfigDict, dotted: str, value) -> ml_collections.ConfigDict:
    """A copy of `config` with `dotted` set to `value`, bypassing ConfigDict's own type checks."""
    tree = config.to_dict()
    *parents, leaf = dotted.split(".")
    node = tree
    for key in parents:
        node = node[key]
    node[leaf] = value
    return ml_collections.ConfigDict(tree)


@pytest.mark.parametrize("variant", mnist_mlp.VARIANTS)
def test_variants_are_valid_and_hold_the_contract_keys(variant: str) -> None:
    config = mnist_mlp.get_config(variant)
    config_schema.validate(config)
    for key in CONTRACT:
        _get(config, key)
    assert config.model.batch_norm == (variant == "bn")
    assert (config.num_steps, config.batch_size, config.model.activation) == (50_000, 60, "sigmoid")


def test_variants_differ_only_in_batch_norm() -> None:
    bn, baseline = (mnist_mlp.get_config(v).to_dict() for v in ("bn", "baseline"))
    assert bn.pop("model").pop("batch_norm") and not baseline.pop("model").pop("batch_norm")
    bn_model, baseline_model = (mnist_mlp.get_config(v).model.to_dict() for v in ("bn", "baseline"))
    assert {k: v for k, v in bn_model.items() if k != "batch_norm"} == {
        k: v for k, v in baseline_model.items() if k != "batch_norm"
    }
    assert bn == baseline  # same learning rate, steps, data, seed...


def test_unknown_variant() -> None:
    with pytest.raises(ValueError, match="unknown variant 'resnet'"):
        mnist_mlp.get_config("resnet")


def test_config_is_locked() -> None:
    config = mnist_mlp.get_config("bn")
    with pytest.raises(AttributeError):
        config.learnig_rate = 0.1
    with pytest.raises(TypeError):
        config.batch_size = "60"


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("batch_size", 0, r"config\.batch_size = 0: must be >= 1"),
        ("num_steps", -5, r"config\.num_steps = -5: must be >= 1"),
        ("eval_every", 0, r"config\.eval_every"),
        ("learning_rate", 0.0, r"config\.learning_rate = 0\.0: must be a positive finite"),
        ("learning_rate", math.nan, r"config\.learning_rate"),
        ("momentum", 1.0, r"config\.momentum"),
        (
            "dataset",
            "cifar10",
            r"config\.dataset = 'cifar10': expected one of \['mnist', 'fashion_mnist', 'imagenet2012'\]",
        ),
        ("data_source", "web", r"config\.data_source = 'web'"),
        ("eval_statistics", "test_batch", r"config\.eval_statistics"),
        ("eval_examples", -1, r"config\.eval_examples = -1: must be >= 0"),
        ("model.activation", "swish", r"config\.model\.activation = 'swish': expected one of"),
        ("model.init_std", -0.1, r"config\.model\.init_std"),
        ("model.dropout_rate", 1.0, r"config\.model\.dropout_rate = 1\.0: must lie in \[0, 1\)"),
        ("model.dropout_rate", -0.1, r"config\.model\.dropout_rate = -0\.1: must lie in \[0, 1\)"),
        ("eval_train_examples", -1, r"config\.eval_train_examples = -1: must be >= 0"),
        ("weight_norms_every", -1, r"config\.weight_norms_every = -1: must be >= 0"),
        ("model.hidden", (100, 0), r"config\.model\.hidden"),
        ("model.name", "resnet", r"config\.model\.name = 'resnet'"),
        ("batch_size", "60", r"config\.batch_size: expected int, got str '60'"),
        ("num_steps", 1.5, r"config\.num_steps: expected int, got float"),
        ("model.batch_norm", "yes", r"config\.model\.batch_norm: expected bool, got str"),
        ("seed", True, r"config\.seed: expected int, got bool"),
        ("optimizer", "adam", r"config\.optimizer = 'adam': expected one of \['sgd', 'rmsprop'\]"),
        ("grad_clip_norm", -1.0, r"config\.grad_clip_norm = -1\.0: must be >= 0"),
        ("diagnostics_every", -1, r"config\.diagnostics_every = -1: must be >= 0"),
        ("checkpoint_every_seconds", -1, r"config\.checkpoint_every_seconds = -1: must be >= 0"),
        ("diagnostics_layers", ("DenseBN_0", ""), r"config\.diagnostics_layers.*non-empty strings"),
        ("diagnostics_step_scales", (1.0, -2.0), r"config\.diagnostics_step_scales.*positive finite"),
    ],
)
def test_impossible_values_and_wrong_types_name_the_key(key: str, value, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        config_schema.validate(_modified(mnist_mlp.get_config("bn"), key, value))


@pytest.mark.parametrize("value", [0, 11])
def test_bn_inception_keeps_between_one_and_ten_modules(value: int) -> None:
    config = fashion_table2.get_config("bn_x5,quick")
    config_schema.validate(config)
    with pytest.raises(ValueError, match=rf"config\.model\.num_modules = {value}: must lie in \[1, 10\]"):
        config_schema.validate(_modified(config, "model.num_modules", value))


def test_unknown_and_missing_keys_name_the_key() -> None:
    config = mnist_mlp.get_config("bn")
    with pytest.raises(ValueError, match=r"config\.learnig_rate: unknown key"):
        config_schema.validate(_modified(config, "learnig_rate", 0.1))
    with pytest.raises(ValueError, match=r"config\.model\.dropout: unknown key for model 'mlp'"):
        config_schema.validate(_modified(config, "model.dropout", 0.5))
    tree = config.to_dict()
    del tree["seed"]
    with pytest.raises(ValueError, match=r"config\.seed: missing"):
        config_schema.validate(ml_collections.ConfigDict(tree))


def test_batch_norm_needs_two_examples_per_batch() -> None:
    with pytest.raises(ValueError, match=r"config\.batch_size = 1: BN needs at least 2"):
        config_schema.validate(_modified(mnist_mlp.get_config("bn"), "batch_size", 1))
    config_schema.validate(_modified(mnist_mlp.get_config("baseline"), "batch_size", 1))


def test_an_int_learning_rate_is_fine() -> None:
    config_schema.validate(_modified(mnist_mlp.get_config("bn"), "learning_rate", 1))


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("--config.learnig_rate=0.1", "--config.learnig_rate: unknown key; did you mean 'learning_rate'?"),
        ("--config.batch_size=0", "config.batch_size = 0: must be >= 1"),
        ("--config.checkpoint_every_seconds=-1", "config.checkpoint_every_seconds = -1: must be >= 0"),
        ("--config.model.activation=swish", "config.model.activation = 'swish'"),
        ("--config.num_devices=64", "config.num_devices = 64: only "),  # more devices than there are
    ],
)
def test_cli_rejects_bad_overrides_before_training(tmp_path: Path, override: str, message: str) -> None:
    workdir = tmp_path / "run"
    result = subprocess.run(
        [sys.executable, "-m", "bnrepro.main", "--config=configs/mnist_mlp.py:bn", f"--workdir={workdir}", override],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 2, result.stderr[-2000:]  # a user's error: one line, no traceback
    assert f"error: {message}" in result.stderr and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert not workdir.exists()  # stopped before training


@pytest.mark.parametrize(
    ("override", "message"),
    [("--config.model.bn.momentum=1.5", "config.model.bn.momentum = 1.5: must lie in [0, 1]"),
     ("--config.model.bn_momentum=0.5", "config.model.bn_momentum: renamed to config.model.bn.momentum")],
)  # fmt: skip
def test_a_config_importing_configs_runs_from_any_working_directory(tmp_path: Path, override: str, message: str):
    """`configs` is an installed package: `configs/mnist_small_batch.py` imports `configs.mnist_mlp` from an
    unrelated working directory with no `sys.path` code (and no PYTHONPATH). The first override reaches the
    loaded config's `model.bn` (refused by the schema, before training); the second is an old key."""
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    workdir = tmp_path / "run"
    result = subprocess.run(
        [sys.executable, "-m", "bnrepro.main", f"--config={REPO / 'configs' / 'mnist_small_batch.py'}:renorm",
         f"--workdir={workdir}", override],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 2
    assert "No module named 'configs'" not in result.stderr
    assert f"error: {message}" in result.stderr and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert not workdir.exists()


def test_an_empty_workdir_is_refused(tmp_path: Path) -> None:
    """`--workdir=` would train into the current directory."""
    result = subprocess.run(
        [sys.executable, "-m", "bnrepro.main", f"--config={REPO / 'configs' / 'mnist_mlp.py'}:bn", "--workdir="],
        cwd=tmp_path, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert "error: --workdir is empty" in result.stderr
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "config_args",
    [["--config=configs/nosuch.py:bn"], ["--config=configs/nosuch.py:bn", "--config.num_steps=3"],
     ["--config", "configs/nosuch.py:bn", "--config.num_steps=3"]],
    ids=["alone", "with-override", "space-separated"],
)  # fmt: skip
def test_a_missing_config_file_is_named(tmp_path: Path, config_args: list[str]) -> None:
    """Named in one line whether the file is first used by an override (while flags are parsed) or by main."""
    result = subprocess.run(
        [sys.executable, "-m", "bnrepro.main", *config_args, f"--workdir={tmp_path / 'run'}"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert f"error: --config=configs/nosuch.py:bn: cannot load 'configs/nosuch.py' from {tmp_path}" in result.stderr
