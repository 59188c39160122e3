"""Turning archives into callables: the graph interpreter, captured code, ``pack``/``load_model``/``verify``."""
