"""Embedding models: config, network, training step and export, one module per model. No Prefect here."""
