"""The sweeps: one `get_sweep(arg)` per file, launched as `python -m bnrepro.sweep --sweep=configs/sweeps/NAME.py`."""
