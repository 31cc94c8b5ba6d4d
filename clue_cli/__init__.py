"""The `clue` command line: one module per command group (see `clue_cli.main`).

Modules here parse arguments, call the library and print; they hold no library code.
"""
