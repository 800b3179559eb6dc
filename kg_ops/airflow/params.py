"""Airflow ``Param``s generated from a stage config, so a DAG's form shows each option with the
config's type, default, allowed values, bounds and help (one home per option)."""

from __future__ import annotations

from typing import Any

from airflow.sdk import Param

from kg_ops.config import StageConfig

_JSON_TYPES = {int: "integer", float: "number", str: "string", bool: "boolean"}


def option_param(config_class: type[StageConfig], name: str, default: Any = None) -> Param:
    """The form field of one option; ``default``: the form's value for an option the config
    requires (it has none of its own)."""
    opt = config_class.option(name)
    json_type: Any = _JSON_TYPES[opt.type]
    kw: dict[str, Any] = {"type": [json_type, "null"] if opt.nullable else json_type,
                          "description": opt.help}
    if opt.choices:
        kw["enum"] = [*opt.choices, *([None] if opt.nullable else [])]
    if opt.minimum is not None:
        kw["minimum"] = opt.minimum
    if opt.maximum is not None:
        kw["maximum"] = opt.maximum
    return Param(default if opt.required else opt.default, **kw)


def stage_params(config_class: type[StageConfig], *names: str) -> dict[str, Param]:
    """``{name: Param}`` for these options of ``config_class``."""
    return {name: option_param(config_class, name) for name in names}
