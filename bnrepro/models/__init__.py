"""Networks built from `bnrepro.layers`."""
