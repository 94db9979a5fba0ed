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
from typing import Any, Literal, Union

import yaml

from megatron_sail.config.fields import range_errors
from megatron_sail.config.presets import PRESETS
from megatron_sail.config.schema import SailConfig, chat_template_of
from megatron_sail.errors import UserError, bounded, shown
from megatron_sail.utils.atomic import write_atomic


class ConfigError(UserError, ValueError):
    """A configuration problem the user must fix; the message says what and where."""


# Every YAML the package reads (configs, overrides, blends, sweeps, site profiles) is a few
# kilobytes of hand-written text: these limits refuse resource bombs, not real files.
YAML_MAX_BYTES = 1 << 20          # 1 MiB
YAML_MAX_NODES = 100_000          # scalars + collections after alias expansion


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader; ``load_yaml`` checks the composed document before building it."""


def _expanded_nodes(root: yaml.Node, origin: str, error: type[Exception]) -> int:
    """Nodes of the document once every alias is expanded (what a walk over it would visit),
    counted on the composed graph with one entry per distinct node: a billion-item alias bomb
    costs microseconds to measure. Stops at the first count over the limit."""
    sizes: dict[int, int] = {}
    open_nodes: set[int] = set()

    def size(node: yaml.Node) -> int:
        key = id(node)
        if key in sizes:
            return sizes[key]
        if key in open_nodes:
            raise error(f"{origin}: a YAML alias refers to a node that contains it")
        open_nodes.add(key)
        total = 1
        if isinstance(node, yaml.SequenceNode):
            children = node.value
        elif isinstance(node, yaml.MappingNode):
            children = [child for pair in node.value for child in pair]
        else:
            children = []
        for child in children:
            total += size(child)
            if total > YAML_MAX_NODES:
                raise error(f"{origin}: more than {YAML_MAX_NODES} YAML nodes once aliases are "
                            "expanded (an alias bomb?)")
        open_nodes.discard(key)
        sizes[key] = total
        return total

    return size(root)


def _load_bounded(text: str, origin: str, error: type[Exception]) -> Any:
    """The document, or ``error`` when a limit is exceeded; a syntax error is left to the
    caller as ``yaml.YAMLError``."""
    if len(text.encode("utf-8", "surrogatepass")) > YAML_MAX_BYTES:
        raise error(f"{origin}: larger than the {YAML_MAX_BYTES // 1024} KiB limit for YAML")
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _expanded_nodes(node, origin, error)
        return loader.construct_document(node)
    except RecursionError:
        raise error(f"{origin}: YAML nested too deeply") from None
    finally:
        loader.dispose()


def load_yaml(text: str, origin: str, error: type[Exception] = ConfigError) -> Any:
    """``yaml.safe_load`` bounded in size (YAML_MAX_BYTES of text, YAML_MAX_NODES after alias
    expansion, nesting within Python's recursion limit); problems raise ``error`` naming
    ``origin``. The one YAML reader of the package."""
    try:
        return _load_bounded(text, origin, error)
    except yaml.YAMLError as exc:
        raise error(f"{origin}: not valid YAML: {bounded(str(exc))}") from None


def parse_override(text: str) -> tuple[list[str], Any]:
    if "=" not in text:
        raise ConfigError(f"override {shown(text)} is not of the form key=value")
    key, raw = text.split("=", 1)
    path = key.strip().split(".")
    if not all(path):
        raise ConfigError(f"override {shown(text)} has an empty key part")
    try:
        value = _load_bounded(raw, f"override {shown(text)}", ConfigError) if raw.strip() else None
    except yaml.YAMLError:
        value = raw  # not YAML: the text itself
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
    if origin_type is Literal:
        choices = typing.get_args(hint)
        if value not in choices:
            raise ConfigError(f"{origin}: '{key}' must be one of {', '.join(map(str, choices))}, "
                              f"got {shown(value)}")
        return value
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
            raise ConfigError(f"{origin}: '{key}' must be a list, got {shown(value)}")
        return [_coerce(v, item, key, origin) for v in value]
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{origin}: '{key}' must be true or false, got {shown(value)}")
    if hint in (int, float):
        if isinstance(value, bool):
            raise ConfigError(f"{origin}: '{key}' must be a number, got {shown(value)}")
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
                f"{origin}: '{key}' must be {hint.__name__}, got {shown(value)}"
            ) from None
    if hint is str:
        if isinstance(value, (dict, list)):
            raise ConfigError(f"{origin}: '{key}' must be a string, got {shown(value)}")
        return str(value)
    raise ConfigError(f"{origin}: '{key}' has an unsupported type {hint}")


def _build(cls, tree: dict, base, prefix: str, origins: dict[str, str], errors: list[str]):
    """Instantiate dataclass ``cls`` from ``tree`` on top of the instance ``base``; every
    unknown key and ill-typed value is appended to ``errors`` (the field keeps ``base``'s)."""
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    values = {}
    for name, raw in tree.items():
        key = f"{prefix}{name}"
        where = origins.get(key, origins.get("", "config"))
        if name not in known:
            choices = ", ".join(sorted(known))
            errors.append(f"{where}: unknown config key '{key}' (known here: {choices})")
            continue
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            if not isinstance(raw, dict):
                errors.append(f"{where}: '{key}' must be a mapping of {hint.__name__} fields")
                continue
            values[name] = _build(hint, raw, getattr(base, name), f"{key}.", origins, errors)
            continue
        try:
            values[name] = _coerce(raw, hint, key, where)
        except ConfigError as exc:
            errors.append(str(exc))
    return dataclasses.replace(base, **values)


def _raise_all(errors: list[str]) -> None:
    if len(errors) == 1:
        raise ConfigError(errors[0])
    if errors:
        raise ConfigError(f"{len(errors)} configuration problems:\n  - " + "\n  - ".join(errors))


def value_errors(cfg: SailConfig, origins: dict[str, str] | None = None) -> list[str]:
    """Values outside their declared ranges, and the relations a single field cannot state;
    each names where the value came from when ``origins`` knows."""
    origins = origins or {}
    errors = range_errors(cfg)
    opt = cfg.optimizer
    if opt.min_lr > opt.lr:
        errors.append(("optimizer.min_lr", f"optimizer.min_lr={opt.min_lr:g} must not exceed "
                                           f"optimizer.lr={opt.lr:g}"))
    return [f"{origins[key]}: {text}" if key in origins else text for key, text in errors]


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
    if path.stat().st_size > YAML_MAX_BYTES:
        raise error(f"{path}: {path.stat().st_size} bytes, larger than the "
                    f"{YAML_MAX_BYTES // 1024} KiB limit for a {what}")
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise error(f"{path}: cannot read the {what}: {exc}") from None
    tree = load_yaml(text, str(path), error) or {}
    if not isinstance(tree, dict):
        raise error(f"{path}: the top level must be a mapping")
    return tree


def load_config(path: str | Path | None, overrides: list[str] = ()) -> SailConfig:
    """Read ``path`` (optional), apply ``overrides`` and resolve the model preset."""
    tree = read_yaml(path) if path is not None else {}
    origins = _leaf_origins(tree, str(path) if path else "defaults")
    for text in overrides:
        key_path, value = parse_override(text)
        _set_path(tree, key_path, value, f"override {shown(text)}")
        origins[".".join(key_path)] = f"override {shown(text)}"
        for i in range(1, len(key_path)):
            origins.setdefault(".".join(key_path[:i]), f"override {shown(text)}")

    model = tree.get("model")
    default = SailConfig().model.preset
    preset_name = model.get("preset", default) if isinstance(model, dict) else default
    if not isinstance(preset_name, str) or preset_name not in PRESETS:
        where = origins.get("model.preset", "config")
        raise ConfigError(
            f"{where}: unknown model.preset {shown(preset_name)} (choose from {', '.join(PRESETS)})"
        )
    preset = copy.deepcopy(PRESETS[preset_name])
    base = SailConfig()
    base.model = dataclasses.replace(
        base.model, vision=preset.vision, adapter=preset.adapter, llm=preset.llm
    )
    errors: list[str] = []
    cfg = _build(SailConfig, tree, base, "", origins, errors)
    _raise_all(errors + value_errors(cfg, origins))
    cfg.data.chat_template = chat_template_of(cfg)  # saved resolved with the run
    return cfg


def config_to_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)


def config_from_dict(tree: dict) -> SailConfig:
    """Rebuild a resolved config (e.g. the one stored in a checkpoint)."""
    errors: list[str] = []
    cfg = _build(SailConfig, tree, SailConfig(), "", {"": "stored config"}, errors)
    _raise_all(errors)
    return cfg


def save_config(cfg, path: str | Path) -> None:
    write_atomic(path, yaml.safe_dump(config_to_dict(cfg), sort_keys=False))
