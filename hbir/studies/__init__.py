"""Built-in study files (hbir study)."""
