"""Finding a user's Python function from its ``"package.module:function"`` name.

    handle = load_callable("myapp.expiry:on_expired")     # the function object
    load_callable("myapp.expiry")                          # ValueError: expected "package.module:function"

Both the configuration check and the ``python`` handler use it, so a name
that cannot be imported is a configuration error before anything starts.

A module is found where Python finds it, and in the working directory: the
installed ``expiryd`` command does not put the working directory on the path
the way ``python -m expiryd`` does, and a handler kept beside the config is the
common case.
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Callable
from typing import Any

__all__ = ["load_callable"]


def load_callable(name: str) -> Callable[..., Any]:
    """Import ``module`` and return its attribute ``function``; ValueError says what is wrong."""
    module_name, _, attribute = name.partition(":")
    if not module_name or not attribute:
        raise ValueError(f'expected "package.module:function", got {name!r}')
    working_directory = os.getcwd()
    if working_directory not in sys.path and "" not in sys.path:
        sys.path.append(working_directory)  # last: it must not shadow an installed package
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        raise ValueError(
            f"cannot import {module_name!r}: no module named {error.name!r} in the working directory "
            f"({working_directory}) or the environment; run expiryd from the module's directory, "
            "install it, or add its directory to PYTHONPATH"
        ) from None
    except Exception as error:  # a user's module can fail to import in any way
        raise ValueError(f"cannot import {module_name!r}: {error.__class__.__name__}: {error}") from None
    target: Any = module
    for part in attribute.split("."):
        target = getattr(target, part, None)
        if target is None:
            raise ValueError(f"{module_name!r} has no attribute {attribute!r}")
    if not callable(target):
        raise ValueError(f"{name!r} is not callable")
    return target
