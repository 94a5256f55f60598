"""Data commands: prepare, generate (filled in by the data module)."""
