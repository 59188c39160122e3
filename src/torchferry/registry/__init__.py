"""Named, versioned archives with aliases: content-addressed blobs and a SQLite index."""
