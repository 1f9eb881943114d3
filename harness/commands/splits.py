"""`harness splits` commands (being written)."""

commands: list = []
