"""A user's function named ``package.module:function``, imported on each node.

Model builders and dataset loaders are the user's own code: genesis names them, and every
validator and trainer imports them from its own path (PYTHONPATH, or an installed
package). Genesis is checked by the name's form alone (nothing imported), so a process
that must not import TensorFlow can still read it.
"""

from __future__ import annotations

import importlib
import importlib.util
import re
from collections.abc import Callable
from typing import Any

FUNCTION_NAME = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*", re.ASCII)
"""``package.module:function``."""


def is_function_name(name: object) -> bool:
    return isinstance(name, str) and FUNCTION_NAME.fullmatch(name) is not None


def import_function(name: str, what: str, error: type[Exception]) -> Callable[..., Any]:
    """The function ``name`` (``package.module:function``), or ``error`` naming ``what``
    (e.g. ``"model 'pkg.mod:build'"``) and the problem."""
    module_name, _, function = name.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if _is_part_of(exc.name, module_name):
            raise not_on_path(name, what, exc, error) from exc
        raise error(f"{what}: importing module {module_name!r} failed: it imports "
                    f"{exc.name!r}, which is not installed") from exc
    except Exception as exc:  # the module's own code failed while importing
        raise error(f"{what}: importing module {module_name!r} failed: "
                    f"{type(exc).__name__}: {exc}") from exc
    found = getattr(module, function, None)
    if found is None:
        raise error(f"{what}: module {module_name!r} has no function {function!r}")
    if not callable(found):
        raise error(f"{what}: {module_name}.{function} is {type(found).__name__}, not a "
                    "function")
    return found


def check_importable(name: str, what: str, error: type[Exception]) -> None:
    """``error`` unless ``name``'s module is on this process's path. The module is found,
    not run."""
    module_name = name.partition(":")[0]
    try:
        found = importlib.util.find_spec(module_name)
    except ImportError as exc:  # a parent package is missing
        raise not_on_path(name, what, exc, error) from exc
    if found is None:
        raise not_on_path(name, what, ModuleNotFoundError(f"No module named {module_name!r}"),
                          error)


def _is_part_of(missing: str | None, module_name: str) -> bool:
    """Whether the module not found is ``module_name`` or one of its packages (rather
    than something it imports)."""
    return missing is None or module_name == missing or module_name.startswith(missing + ".")


def not_on_path(name: str, what: str, exc: ImportError, error: type[Exception]) -> Exception:
    return error(f"{what}: cannot import module {name.partition(':')[0]!r} ({exc}); every "
                 "validator and trainer needs it on its path (PYTHONPATH, or install it)")
