"""The CLUE TFX pipeline: definition, runners and trainer module (the `clue` CLI is `clue_cli`)."""
