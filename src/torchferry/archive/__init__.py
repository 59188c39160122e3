"""The ``.ferry`` archive format: container, manifest, integrity, program capture."""
