"""Probes fitted on frozen embeddings, and the metrics that score them."""
