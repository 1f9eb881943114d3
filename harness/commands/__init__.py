"""Core CLI commands; each module exposes ``commands``, a list of click commands."""
