"""Example harness method plugin (see this package's README.md)."""

from harness_randproj.method import RandomProjectionMethod, projection_matrix

__all__ = ["RandomProjectionMethod", "projection_matrix"]
