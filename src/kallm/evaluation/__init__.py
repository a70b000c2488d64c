"""Evaluating a model: BIG-Bench Hard (`bbh/`) and held-out quality on data no run trained on (`heldout/`)."""
