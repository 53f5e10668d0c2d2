"""The experiment configs: one `get_config(arg)` per file, launched as `--config=configs/NAME.py[:ARG]`."""
