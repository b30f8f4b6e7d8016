"""Flax NNX ports of the AudioLDM2 components; attribute names mirror the diffusers/transformers module trees."""
