"""Dataset readers, caches and loaders for facial expression recognition."""
