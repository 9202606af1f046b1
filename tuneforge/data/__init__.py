"""Data in: sources read into numbered raw rows (`reading.py`: JSONL, JSON, CSV, Parquet, Hugging
Face datasets), and rows validated against a dataset schema with pandera, bad ones quarantined
with their reasons (`validation.py`). The tasks `load_dataset` and `validate_dataset` wrap them
for a run; `tuneforge validate` calls them directly."""
