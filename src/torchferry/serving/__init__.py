"""The inference server: protocols, dynamic batching, model manager, metrics, limits."""
