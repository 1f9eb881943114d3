"""Built-in split definitions, as data (``builtin.toml``); read by :mod:`harness.splits`."""
