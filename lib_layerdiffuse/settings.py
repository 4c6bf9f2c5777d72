"""Settings dataclasses shared by UIs, APIs and the infotext: one grammar for every panel.

A settings class is a frozen dataclass whose fields are declared with `setting(...)`: each has a
UI label, an infotext key and other accepted names, and a kind that says how a value from a
checkbox, a JSON payload or a pasted parameters string is checked and normalised. Errors name the
field and the valid values.
"""

from __future__ import annotations

import dataclasses
import enum
import math
from typing import Any, Callable, Mapping, Optional, Union

import numpy as np

from .images import to_png_base64, to_rgba_uint8

KINDS = ("bool", "number", "integer", "text", "image", "choice")


def setting(default: Any, label: str, infotext: str, *aliases: str, kind: str, lo: float = 0.0,
            hi: float = 0.0, parse: Optional[Callable[[Any], Any]] = None,
            omit_default: bool = False) -> Any:
    """A dataclass field with its names and kind.

    `parse` turns a value into the field's type for kind "choice" (an enum's `parse`).
    `omit_default` leaves the field out of the infotext while it holds its default.
    """
    if kind not in KINDS:
        raise AssertionError(f"unknown setting kind {kind!r}")
    meta = {"label": label, "infotext": infotext, "aliases": aliases, "kind": kind, "range": (lo, hi),
            "parse": parse, "omit_default": omit_default}
    return dataclasses.field(default=default, metadata=meta)


class Settings:
    """Base of the settings dataclasses (declare them `@dataclass(frozen=True, eq=False)`)."""

    #: how error messages name this group of settings
    GROUP = "settings"

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            object.__setattr__(self, f.name, _normalise(f, getattr(self, f.name)))

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        for f in dataclasses.fields(self):
            a, b = getattr(self, f.name), getattr(other, f.name)
            if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
                if not (isinstance(a, np.ndarray) and isinstance(b, np.ndarray) and np.array_equal(a, b)):
                    return False
            elif a != b:
                return False
        return True

    __hash__ = None  # may hold arrays

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def script_values(cls, args: tuple) -> dict[str, Any]:
        """Field values from what a UI or API hands over: positional values in field order, or a
        dict of named values as the first value (which then implies `enabled=True` unless
        given, for classes with an `enabled` field). None stands for the default (JSON null)."""
        if args and isinstance(args[0], Mapping):
            named = cls.named_to_fields(args[0])
            if "enabled" in cls.field_names():
                named.setdefault("enabled", True)
            return named
        return cls.positional_to_named(args)

    @classmethod
    def positional_to_named(cls, args: tuple) -> dict[str, Any]:
        """Positional values in field order; None stands for the default (JSON null)."""
        fields = dataclasses.fields(cls)
        if len(args) > len(fields):
            raise ValueError(f"{cls.GROUP} takes at most {len(fields)} positional values "
                             f"({', '.join(f.name for f in fields)}), got {len(args)}.")
        return {f.name: v for f, v in zip(fields, args)}

    @classmethod
    def named_to_fields(cls, values: Mapping[str, Any]) -> dict[str, Any]:
        """Map names (field names, UI labels, infotext keys, aliases; any case, `-`/space for `_`)
        to field names; an unknown name is an error listing the valid ones."""
        table = cls.name_table()
        out: dict[str, Any] = {}
        for key, value in values.items():
            name = table.get(name_key(key)) if isinstance(key, str) else None
            if name is None:
                raise ValueError(f"unknown {cls.GROUP} argument {key!r}; valid names are: "
                                 f"{', '.join(cls.field_names())}")
            out[name] = value
        return out

    @classmethod
    def name_table(cls) -> dict[str, str]:
        table: dict[str, str] = {}
        for f in dataclasses.fields(cls):
            meta = f.metadata
            for alias in (f.name, meta["label"], meta["infotext"], *meta["aliases"]):
                table[name_key(alias)] = f.name
        return table

    @classmethod
    def infotext_values(cls, params: Mapping[str, Any]) -> dict[str, Any]:
        """This class's values found in parsed infotext (`{key: value-string}`); images cannot
        travel in infotext and are skipped."""
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            key = f.metadata["infotext"]
            if f.metadata["kind"] != "image" and key in params:
                values[f.name] = params[key]
        return values

    def to_script_args(self) -> tuple:
        """Positional values in UI / API order."""
        return tuple(getattr(self, f.name) for f in dataclasses.fields(self))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready named values (images as PNG data URLs, enums as their strings)."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, np.ndarray):
                value = to_png_base64(value)
            elif isinstance(value, enum.Enum):
                value = value.value
            out[f.name] = value
        return out

    def to_infotext(self) -> dict[str, Union[str, float, bool]]:
        """Plain scalars for the generation parameters text.

        Empty texts and absent images are left out (an empty value makes WebUI log "Error
        parsing" on paste); an image that was given is recorded as True.
        """
        out: dict[str, Union[str, float, bool]] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            kind, key = f.metadata["kind"], f.metadata["infotext"]
            if kind == "image":
                if value is not None:
                    out[key] = True
                continue
            if (kind == "text" and not value) or (f.metadata["omit_default"] and value == f.default):
                continue
            out[key] = value.value if isinstance(value, enum.Enum) else value
        return out


def name_key(name: str) -> str:
    return name.strip().casefold().replace(" ", "_").replace("-", "_")


_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off", ""}


def _as_bool(name: str, value: Any) -> bool:
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)) and int(value) in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().casefold() in _TRUE | _FALSE:
        return value.strip().casefold() in _TRUE
    raise TypeError(f"{name} must be true or false, got {type(value).__name__} {value!r}")


def _as_number(name: str, value: Any, lo: float, hi: float) -> float:
    if isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be a number between {lo:g} and {hi:g}, got {value!r}")
    if isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            raise ValueError(f"{name} must be a number between {lo:g} and {hi:g}, got {value!r}") from None
    elif isinstance(value, (int, float, np.integer, np.floating)):
        number = float(value)
    else:
        raise TypeError(f"{name} must be a number between {lo:g} and {hi:g}, got {type(value).__name__}")
    if not math.isfinite(number) or not lo <= number <= hi:
        raise ValueError(f"{name} must be between {lo:g} and {hi:g}, got {number:g}")
    return number


def _as_integer(name: str, value: Any, lo: float, hi: float) -> int:
    number = _as_number(name, value, lo, hi)
    if number != int(number):
        raise ValueError(f"{name} must be a whole number between {lo:g} and {hi:g}, got {number:g}")
    return int(number)


def _as_text(name: str, value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{name} must be text, got {type(value).__name__} {value!r}")
    return value


def _normalise(f: dataclasses.Field, value: Any) -> Any:
    kind = f.metadata["kind"]
    if value is None and kind != "image":
        return f.default
    if kind == "bool":
        return _as_bool(f.name, value)
    if kind == "number":
        return _as_number(f.name, value, *f.metadata["range"])
    if kind == "integer":
        return _as_integer(f.name, value, *f.metadata["range"])
    if kind == "text":
        return _as_text(f.name, value)
    if kind == "image":
        return to_rgba_uint8(value, f.name)
    return f.metadata["parse"](value)
