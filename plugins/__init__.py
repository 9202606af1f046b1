"""Tuning strategies: the `TuningStrategy` contract, the registry, and the built-in strategies."""
