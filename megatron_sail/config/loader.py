"""YAML + dotted ``key=value`` overrides -> a typed, resolved ``SailConfig``.

Unknown keys and ill-typed values are errors naming the key and where it came from; the
preset named by ``model.preset`` fills the architecture before any explicit field wins.
"""

from __future__ import annotations

import copy
import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, Union

import yaml

from megatron_sail.config.presets import PRESETS
from megatron_sail.config.schema import SailConfig
from megatron_sail.errors import UserError


class ConfigError(UserError, ValueError):
    """A configuration problem the user must fix; the message says what and where."""


def parse_override(text: str) -> tuple[list[str], Any]:
    if "=" not in text:
        raise ConfigError(f"override {text!r} is not of the form key=value")
    key, raw = text.split("=", 1)
    path = key.strip().split(".")
    if not all(path):
        raise ConfigError(f"override {text!r} has an empty key part")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    return path, value


def _set_path(tree: dict, path: list[str], value: Any, origin: str) -> None:
    node = tree
    for part in path[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"{origin}: '{'.'.join(path)}' goes below '{part}', which is a value")
        node = child
    node[path[-1]] = value


def _coerce(value: Any, hint: Any, key: str, origin: str) -> Any:
    origin_type = typing.get_origin(hint)
    if origin_type in (Union, types.UnionType):
        options = [a for a in typing.get_args(hint) if a is not type(None)]
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            return None
        return _coerce(value, options[0], key, origin)
    if origin_type is list:
        (item,) = typing.get_args(hint)
        if isinstance(value, str):
            value = [v for v in value.split(",") if v] if value else []
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{origin}: '{key}' must be a list, got {value!r}")
        return [_coerce(v, item, key, origin) for v in value]
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{origin}: '{key}' must be true or false, got {value!r}")
    if hint in (int, float):
        if isinstance(value, bool):
            raise ConfigError(f"{origin}: '{key}' must be a number, got {value!r}")
        try:
            number = float(value) if hint is float else value
            if hint is int:
                if isinstance(value, float) and value.is_integer():
                    number = int(value)
                elif not isinstance(value, int):
                    number = int(str(value))
            return number
        except (TypeError, ValueError):
            raise ConfigError(
                f"{origin}: '{key}' must be {hint.__name__}, got {value!r}"
            ) from None
    if hint is str:
        if isinstance(value, (dict, list)):
            raise ConfigError(f"{origin}: '{key}' must be a string, got {value!r}")
        return str(value)
    raise ConfigError(f"{origin}: '{key}' has an unsupported type {hint}")


def _build(cls, tree: dict, base, prefix: str, origins: dict[str, str]):
    """Instantiate dataclass ``cls`` from ``tree`` on top of the instance ``base``."""
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    values = {}
    for name, raw in tree.items():
        key = f"{prefix}{name}"
        where = origins.get(key, origins.get("", "config"))
        if name not in known:
            choices = ", ".join(sorted(known))
            raise ConfigError(f"{where}: unknown config key '{key}' (known here: {choices})")
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            if not isinstance(raw, dict):
                raise ConfigError(f"{where}: '{key}' must be a mapping of {hint.__name__} fields")
            values[name] = _build(hint, raw, getattr(base, name), f"{key}.", origins)
        else:
            values[name] = _coerce(raw, hint, key, where)
    return dataclasses.replace(base, **values)


def _leaf_origins(tree: dict, origin: str, prefix: str = "") -> dict[str, str]:
    out = {}
    for name, value in tree.items():
        key = f"{prefix}{name}"
        out[key] = origin
        if isinstance(value, dict):
            out.update(_leaf_origins(value, origin, f"{key}."))
    return out


def read_yaml(path: str | Path, error: type[Exception] = ConfigError,
              what: str = "config file") -> dict:
    """A YAML file whose top level is a mapping; problems raise ``error`` naming the file."""
    path = Path(path)
    if not path.is_file():
        raise error(f"{what} not found: {path}")
    try:
        tree = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise error(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(tree, dict):
        raise error(f"{path}: the top level must be a mapping")
    return tree


def load_config(path: str | Path | None, overrides: list[str] = ()) -> SailConfig:
    """Read ``path`` (optional), apply ``overrides`` and resolve the model preset."""
    tree = read_yaml(path) if path is not None else {}
    origins = _leaf_origins(tree, str(path) if path else "defaults")
    for text in overrides:
        key_path, value = parse_override(text)
        _set_path(tree, key_path, value, f"override {text!r}")
        origins[".".join(key_path)] = f"override {text!r}"
        for i in range(1, len(key_path)):
            origins.setdefault(".".join(key_path[:i]), f"override {text!r}")

    preset_name = (tree.get("model") or {}).get("preset", SailConfig().model.preset)
    if preset_name not in PRESETS:
        where = origins.get("model.preset", "config")
        raise ConfigError(
            f"{where}: unknown model.preset '{preset_name}' (choose from {', '.join(PRESETS)})"
        )
    preset = copy.deepcopy(PRESETS[preset_name])
    base = SailConfig()
    base.model = dataclasses.replace(
        base.model, vision=preset.vision, adapter=preset.adapter, llm=preset.llm
    )
    return _build(SailConfig, tree, base, "", origins)


def config_to_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)


def config_from_dict(tree: dict) -> SailConfig:
    """Rebuild a resolved config (e.g. the one stored in a checkpoint)."""
    return _build(SailConfig, tree, SailConfig(), "", {"": "stored config"})


def save_config(cfg, path: str | Path) -> None:
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(yaml.safe_dump(config_to_dict(cfg), sort_keys=False))
    tmp.replace(path)
