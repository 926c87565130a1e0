"""The pull sync: a project's changes since the cursor -> one tagged Lance version per run."""
