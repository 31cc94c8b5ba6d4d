"""The CLUE TFX pipeline: definition, runners, trainer module and the `clue` CLI."""
