"""Modules the learned and model drafters run (the batched draft-model cache; heads and drafters live beside)."""
