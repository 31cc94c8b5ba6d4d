"""FileBasedExampleGen executor for JSON Lines files (one JSON object per line)."""
