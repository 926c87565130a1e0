"""Reading stored versions: the Python API, SQL (DuckDB), version diffs, exports for training."""
