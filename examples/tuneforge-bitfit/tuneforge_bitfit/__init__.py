"""BitFit for tuneforge: a third-party tuning strategy plugin (entry point `bitfit`)."""

from tuneforge_bitfit.strategy import BitFitSettings, BitFitStrategy

__all__ = ["BitFitSettings", "BitFitStrategy"]
