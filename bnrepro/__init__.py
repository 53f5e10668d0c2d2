"""bnrepro: Batch Normalization (Ioffe & Szegedy, 2015) reproduced in JAX/Flax."""
