"""The experiment config files (configs/*.py), imported by path as `--config=configs/NAME.py` does."""

import importlib.util
from pathlib import Path

CONFIGS = Path(__file__).resolve().parent.parent / "configs"


def load_config_file(name: str):
    """The module configs/NAME.py."""
    spec = importlib.util.spec_from_file_location(name, CONFIGS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


mnist_mlp = load_config_file("mnist_mlp")
fashion_table2 = load_config_file("fashion_table2")
mnist_small_batch = load_config_file("mnist_small_batch")
mnist_ics = load_config_file("mnist_ics")
IMAGENET_RUNS = ("inception", "bn_baseline", "bn_x5", "bn_x30", "bn_x5_sigmoid")  # Table 2's rows
imagenet = {run: load_config_file(f"imagenet_{run}") for run in IMAGENET_RUNS}
