"""Training commands: train, quickstart."""
