"""Custom TFX components of CLUE on TFX."""
