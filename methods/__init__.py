"""Methods: NetVLAD and SFRS baselines, extraction, PCA-whitening and training.

The registry functions are importable without torch; methods register themselves when
:func:`get_method` or :func:`list_methods` is first called.
"""

from methods.registry import get_method, get_method_class, list_methods, register_method

__all__ = ["get_method", "get_method_class", "list_methods", "register_method"]
