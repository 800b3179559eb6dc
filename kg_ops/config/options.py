"""Typed stage options: one dataclass field per option holds its name, type, default, allowed
values, help and checks; the CLI parser, the command line an operator submits, the manifest
and the DAG's Params are all generated from it.

Light on purpose (standard library only): the Airflow side imports it while parsing DAG files.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from collections.abc import Iterable, Sequence
from typing import Any, ClassVar

from kg_ops.errors import KGOpsError

_TRUE = ("true", "1", "yes", "on")
_FALSE = ("false", "0", "no", "off")


class ConfigError(KGOpsError, ValueError):
    """An option has a wrong type or value; the message names the option and what is allowed."""


def as_bool(value: Any, what: str = "value") -> bool:
    """The one boolean parser: bools as they are; "true/false", "1/0", "yes/no", "on/off"
    (template-rendered flags and connection extras arrive as strings)."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in _TRUE:
        return True
    if isinstance(value, str) and value.strip().lower() in _FALSE:
        return False
    raise ConfigError(f"{what} must be true or false, got {value!r}")


def option(default: Any = dataclasses.MISSING, *, help: str, choices: Sequence | None = None,
           minimum: float | None = None, maximum: float | None = None, recorded: bool = True,
           flag: str | None = None) -> Any:
    """A config field. ``recorded=False``: where or how fast the stage runs, not what it
    computes (left out of the manifest's config, so changing it reuses a finished stage).
    ``flag``: the CLI spelling if not ``--name-with-dashes``."""
    meta = {"help": help, "choices": tuple(choices) if choices else None, "minimum": minimum,
            "maximum": maximum, "recorded": recorded, "flag": flag}
    return dataclasses.field(default=default, metadata=meta)


@dataclasses.dataclass(frozen=True)
class Option:
    """One option as generators see it."""

    name: str
    type: type
    nullable: bool
    required: bool
    default: Any
    help: str
    choices: tuple | None
    minimum: float | None
    maximum: float | None
    recorded: bool
    flag: str

    def coerce(self, value: Any) -> Any:
        """``value`` as this option's type (templates and env vars give strings)."""
        if value is None or (value == "" and (self.nullable or self.type is not str)):
            if self.nullable:
                return None
            raise ConfigError(f"{self.flag} needs a value")
        if self.type is bool:
            return as_bool(value, self.flag)
        if self.type is int and not isinstance(value, bool):
            try:
                if isinstance(value, float) and not value.is_integer():
                    raise ValueError
                return int(value)
            except (TypeError, ValueError):
                raise ConfigError(f"{self.flag} must be an integer, got {value!r}") from None
        if self.type is float and not isinstance(value, bool):
            try:
                return float(value)
            except (TypeError, ValueError):
                raise ConfigError(f"{self.flag} must be a number, got {value!r}") from None
        if self.type is str:
            return str(value)
        raise ConfigError(f"{self.flag} must be {self.type.__name__}, got {value!r}")

    def check(self, value: Any) -> None:
        if value is None:
            return
        if self.choices and value not in self.choices:
            raise ConfigError(f"{self.flag} must be one of {', '.join(map(str, self.choices))}; "
                              f"got {value!r}")
        if self.minimum is not None and value < self.minimum:
            raise ConfigError(f"{self.flag} must be >= {self.minimum:g}, got {value!r}")
        if self.maximum is not None and value > self.maximum:
            raise ConfigError(f"{self.flag} must be <= {self.maximum:g}, got {value!r}")


def _field_type(hint: Any) -> tuple[type, bool]:
    args = typing.get_args(hint)
    if typing.get_origin(hint) in (typing.Union, types.UnionType) and type(None) in args:
        (inner,) = [a for a in args if a is not type(None)]
        return inner, True
    return hint, False


@dataclasses.dataclass(frozen=True)
class StageConfig:
    """Base of the per-stage configs: values are coerced to their types and checked on
    construction, so a config that exists is valid."""

    stage: ClassVar[str] = ""

    def __post_init__(self) -> None:
        for opt in self.options():
            value = opt.coerce(getattr(self, opt.name))
            opt.check(value)
            object.__setattr__(self, opt.name, value)
        self.validate()

    def validate(self) -> None:
        """Checks across options (subclasses)."""

    @classmethod
    def options(cls) -> list[Option]:
        hints = typing.get_type_hints(cls)
        out = []
        for f in dataclasses.fields(cls):
            typ, nullable = _field_type(hints[f.name])
            required = f.default is dataclasses.MISSING
            out.append(Option(
                name=f.name, type=typ, nullable=nullable, required=required,
                default=None if required else f.default, help=f.metadata.get("help", ""),
                choices=f.metadata.get("choices"), minimum=f.metadata.get("minimum"),
                maximum=f.metadata.get("maximum"), recorded=f.metadata.get("recorded", True),
                flag=f.metadata.get("flag") or "--" + f.name.replace("_", "-")))
        return out

    @classmethod
    def option(cls, name: str) -> Option:
        for opt in cls.options():
            if opt.name == name:
                return opt
        raise KeyError(f"{cls.__name__} has no option {name!r}")

    @classmethod
    def names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls))

    @classmethod
    def defaults(cls) -> dict[str, Any]:
        return {o.name: o.default for o in cls.options() if not o.required}

    # --- command line -------------------------------------------------------------------------
    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser, exclude: Iterable[str] = ()) -> None:
        """One argparse option per field."""
        skip = set(exclude)
        for opt in cls.options():
            if opt.name in skip:
                continue
            kw: dict[str, Any] = {"dest": opt.name, "help": _help(opt)}
            if opt.type is bool:
                kw.update(action=argparse.BooleanOptionalAction, default=opt.default)
            else:
                kw.update(type=opt.type, default=opt.default, required=opt.required,
                          choices=opt.choices, metavar=_metavar(opt))
            parser.add_argument(opt.flag, **kw)

    @classmethod
    def from_args(cls, args: argparse.Namespace, **extra: Any):
        values = {n: getattr(args, n) for n in cls.names() if hasattr(args, n)}
        return cls(**{**values, **extra})

    def to_args(self, exclude: Iterable[str] = ()) -> list[str]:
        """The command-line options that reproduce this config (defaults left out)."""
        skip, out = set(exclude), []
        for opt in self.options():
            value = getattr(self, opt.name)
            if opt.name in skip or (not opt.required and value == opt.default):
                continue
            if opt.type is bool:
                out.append(opt.flag if value else "--no-" + opt.flag[2:])
            elif value is not None:
                out += [opt.flag, str(value)]
        return out

    # --- records --------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def recorded(self) -> dict[str, Any]:
        """What the stage computes from (the manifest's config; reuse compares it)."""
        return {o.name: getattr(self, o.name) for o in self.options() if o.recorded}

    @classmethod
    def from_dict(cls, values: dict[str, Any]):
        unknown = sorted(set(values) - set(cls.names()))
        if unknown:
            raise ConfigError(f"unknown {cls.stage or cls.__name__} option(s): "
                              f"{', '.join(unknown)}")
        return cls(**values)

    def replace(self, **changes: Any):
        return dataclasses.replace(self, **changes)


def _help(opt: Option) -> str:
    if opt.required or opt.default in (None, "") or opt.type is bool and opt.default is False:
        return opt.help
    return f"{opt.help} (default: {opt.default})" if opt.help else f"default: {opt.default}"


def _metavar(opt: Option) -> str | None:
    if opt.choices:
        return "{" + ",".join(map(str, opt.choices)) + "}"
    return None
