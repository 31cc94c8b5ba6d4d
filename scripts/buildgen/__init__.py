"""The BUILD generator behind scripts/gen_build.py: ``scan``, ``deps``, ``render``."""
