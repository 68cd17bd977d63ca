"""The shared engine: trainer, objectives, data pipeline, checkpoints, logging, launch helpers."""
