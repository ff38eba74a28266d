"""Frozen dataclass configurations that round-trip through plain dicts (and so JSON).

Every configuration of lungslice (``FeatureConfig``, ``InputConfig``,
``AggregateConfig``, ``HeadConfig``, ``LabelRule``, ...) derives from
:class:`DictConfig`: ``config.to_dict()`` gives JSON-ready values (tuples as
lists, nested configs as dicts) and ``type(config).from_dict(d)`` rebuilds an
equal config from them, turning lists back into the tuples and nested configs
the field types name. Unknown keys are refused, missing keys take their
defaults, and values are checked by the class's own ``__post_init__``.
"""

from __future__ import annotations

import dataclasses
import functools
import types
import typing
from collections.abc import Mapping
from typing import Any, Self, Union

from lungslice.errors import ConfigError
from lungslice.provenance import config_dict

__all__ = ["DictConfig"]


class DictConfig:
    """Mixin of frozen dataclass configs: :meth:`to_dict`, :meth:`from_dict`, :meth:`replace`."""

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready values of every field (tuples as lists, nested configs as dicts)."""
        return config_dict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Self:
        """Rebuild a config from :meth:`to_dict` output (or its JSON round trip).

        Parameters
        ----------
        data : mapping
            Field name -> value; absent fields keep their defaults.

        Raises
        ------
        ConfigError
            If ``data`` is not a mapping, names a field the class does not
            have, or holds a value the class rejects.
        """
        name = cls.__name__
        if not isinstance(data, Mapping):
            raise ConfigError(
                f"{name}.from_dict: expected a mapping of settings, got {type(data).__name__}. "
                f"Fix: pass the dict {name}.to_dict() wrote."
            )
        fields = _field_types(typing.cast(type, cls))
        unknown = sorted(set(data) - set(fields))
        if unknown:
            raise ConfigError(
                f"{name}.from_dict: unknown setting(s) {', '.join(map(repr, unknown))}; expected "
                f"some of {', '.join(fields)}. Fix: pass the dict {name}.to_dict() wrote "
                "(it may come from another lungslice version)."
            )
        values = {key: _convert(fields[key], value) for key, value in data.items()}
        try:
            return cls(**values)
        except TypeError as err:
            raise ConfigError(f"{name}.from_dict: {err}") from None

    def replace(self, **changes: Any) -> Self:
        """A copy with ``changes`` applied (validated again)."""
        return dataclasses.replace(self, **changes)  # type: ignore[type-var]


@functools.cache
def _field_types(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls) if f.init}


def _convert(hint: Any, value: Any) -> Any:
    """``value`` shaped as ``hint`` says: lists -> tuples, dicts -> nested configs."""
    if value is None:
        return None
    origin = typing.get_origin(hint)
    if origin is Union or origin is types.UnionType:
        options = [a for a in typing.get_args(hint) if a is not type(None)]
        for option in options:
            shaped = _shape_matches(option, value)
            if shaped:
                return _convert(option, value)
        return value
    if isinstance(hint, type) and issubclass(hint, DictConfig) and isinstance(value, Mapping):
        return hint.from_dict(value)
    if origin is tuple and isinstance(value, list | tuple):
        args = typing.get_args(hint)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(args[0], v) for v in value)
        if args and len(args) == len(value):
            return tuple(_convert(a, v) for a, v in zip(args, value, strict=True))
        return tuple(value)
    return value


def _shape_matches(hint: Any, value: Any) -> bool:
    origin = typing.get_origin(hint)
    if origin is tuple:
        return isinstance(value, list | tuple)
    if isinstance(hint, type) and issubclass(hint, DictConfig):
        return isinstance(value, Mapping)
    return True
