"""Attention kernels: pure functions of arrays, no Flax modules, no model knowledge."""
