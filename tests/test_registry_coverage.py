"""The invariant registry must cover every bijector class that flowkit defines."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import flowkit
import flowkit.bijectors
from flowkit.bijectors.base import Bijector
from tests.cases import BIJECTOR_CASES


def all_bijector_classes() -> set[type]:
    classes = set()
    for module_info in pkgutil.walk_packages(flowkit.__path__, prefix="flowkit."):
        module = importlib.import_module(module_info.name)
        for _, value in inspect.getmembers(module, inspect.isclass):
            if issubclass(value, Bijector) and value is not Bijector and value.__module__.startswith("flowkit"):
                classes.add(value)
    return classes


def classes_in(module: object) -> set[type]:
    found = {type(module)}
    for child in module.modules():
        found.add(type(child))
    return found


def test_every_bijector_class_has_a_case() -> None:
    covered: set[type] = set()
    for case in BIJECTOR_CASES:
        covered |= classes_in(case.make())
    missing = sorted(cls.__qualname__ for cls in all_bijector_classes() - covered)
    assert not missing, f"bijectors without a case in tests/cases.py: {missing}"
