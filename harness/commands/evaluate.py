"""`harness evaluate` commands (being written)."""

commands: list = []
