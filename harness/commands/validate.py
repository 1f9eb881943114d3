"""`harness validate` commands (being written)."""

commands: list = []
