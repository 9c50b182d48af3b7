"""Building the solver's frozen result dataclasses (``Metrics``, ``Placement``) quickly."""

from __future__ import annotations

from dataclasses import MISSING, fields
from functools import lru_cache
from typing import Any, Dict, FrozenSet, Tuple, Type, TypeVar

T = TypeVar("T")


@lru_cache(maxsize=None)
def _layout(cls: type) -> Tuple[Dict[str, Any], FrozenSet[str]]:
    """(defaults by field name, all field names) of the dataclass ``cls``."""
    for field in fields(cls):
        if field.default_factory is not MISSING:
            raise TypeError(f"{cls.__name__}.{field.name} has a default factory")
    return ({f.name: f.default for f in fields(cls) if f.default is not MISSING},
            frozenset(f.name for f in fields(cls)))


def frozen_instance(cls: Type[T], **values: Any) -> T:
    """An instance of the frozen dataclass ``cls`` holding ``values`` (defaults for the other
    fields), made without calling its ``__init__``; ``cls`` has no ``__post_init__`` and no
    default factories.

    Why: a frozen dataclass's generated ``__init__`` stores every field through
    ``object.__setattr__``; at the 12-15 fields of a solve's results that is about 5 us,
    a tenth of a whole small-model solve. The instance is the same (frozen, same fields);
    a missing or unknown field raises TypeError as the constructor would.
    """
    defaults, names = _layout(cls)
    instance = object.__new__(cls)
    state = instance.__dict__
    state.update(defaults)
    state.update(values)
    if state.keys() != names:
        unknown = sorted(state.keys() - names)
        missing = sorted(names - state.keys())
        raise TypeError(f"{cls.__name__}: unknown fields {unknown}, missing fields {missing}")
    return instance
