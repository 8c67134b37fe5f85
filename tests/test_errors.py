"""Every exception the project defines derives from one base, ``flobc.errors.FlobcError``,
so a caller can catch whatever flobc reports in one clause, and input errors stay
``ValueError``s as callers have always caught them."""

from __future__ import annotations

import importlib
import inspect
from functools import cache

from layering import modules

from flobc import errors
from flobc.errors import FlobcError, InputError


@cache
def project_exceptions() -> list[type[BaseException]]:
    """Every public exception class defined in a module of the project."""
    found = []
    for name in modules():
        if name.endswith("__main__"):
            continue  # running it is what importing it does
        module = importlib.import_module(name)
        for attr, value in vars(module).items():
            if (inspect.isclass(value) and issubclass(value, BaseException)
                    and value.__module__ == name and not attr.startswith("_")):
                found.append(value)
    return found


def test_every_project_exception_derives_the_one_base() -> None:
    found = project_exceptions()
    assert len(found) >= 20, [e.__qualname__ for e in found]
    strays = [f"{e.__module__}.{e.__qualname__}" for e in found if not issubclass(e, FlobcError)]
    assert not strays, f"exceptions outside flobc.errors.FlobcError: {strays}"


def test_each_floor_has_its_base_and_input_errors_are_value_errors() -> None:
    floors = {"flobc.consensus": errors.ConsensusError, "flobc.validator": errors.ValidatorError,
              "flobc.trainer": errors.TrainerError, "flobc.launch": errors.LaunchError,
              "flobc.storage": errors.StorageError}
    for exc in project_exceptions():
        base = next((b for prefix, b in floors.items() if exc.__module__.startswith(prefix)),
                    None)
        if base is not None and exc is not base:
            assert issubclass(exc, base) or issubclass(exc, InputError), exc
    assert issubclass(InputError, ValueError)
    for name in ("DecodeError", "ConfigError", "DatasetError", "WeightsError", "ModelError",
                 "MessageError", "VerificationError", "QueryError"):
        exc = next(e for e in project_exceptions() if e.__name__ == name)
        assert issubclass(exc, InputError), name
