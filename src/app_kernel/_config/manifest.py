"""Read ``manifest.yaml`` and merge configuration layers.

A manifest mirrors the settings: one mapping per section under its field name
(``redis:``, ``auth:`` ...), keys named as the fields. Layers are merged so that
explicit arguments beat environment variables, which beat the manifest, which
beats the defaults.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel

from app_kernel.errors import SettingsError

__all__ = ("load_manifest", "merge_layers")

_NOT_IN_MANIFEST = frozenset({"health_checks"})


def load_manifest(path: str | Path, model: type[BaseModel]) -> dict[str, Any]:
    """Load and check a manifest against ``model``'s fields.

    Raises:
        SettingsError: unreadable file, invalid YAML, or an unknown key.
    """
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as exc:
        msg = f"manifest {str(file)!r}: cannot be read ({exc.strerror or exc})"
        raise SettingsError(msg) from None
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 (a SafeLoader)
    except yaml.YAMLError as exc:
        msg = f"manifest {str(file)!r}: not valid YAML ({exc})"
        raise SettingsError(msg) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        msg = f"manifest {str(file)!r}: expected a mapping of sections, got {type(data).__name__}"
        raise SettingsError(msg)
    _check_keys(data, model, prefix="", source=str(file))
    return data


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing a key written twice in one mapping.

    YAML requires keys to be unique, but PyYAML keeps the last value: a second
    ``observability:`` block would silently drop every setting of the first.
    Keys brought in by a merge (``<<: *defaults``) may still be overridden.
    """

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        first_line: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=deep)
            try:
                line = first_line.setdefault(key, key_node.start_mark.line)
            except TypeError:  # an unhashable key: the base class reports it
                continue
            if line != key_node.start_mark.line:
                raise yaml.constructor.ConstructorError(
                    None,
                    None,
                    f"key {key!r} is written twice (lines {line + 1} and "
                    f"{key_node.start_mark.line + 1}); keep one",
                    key_node.start_mark,
                )
        return super().construct_mapping(node, deep=deep)


def _check_keys(data: Mapping[str, Any], model: type[BaseModel], prefix: str, source: str) -> None:
    known = [name for name in model.model_fields if name not in _NOT_IN_MANIFEST]
    for key, value in data.items():
        name = f"{prefix}{key}"
        if key not in known:
            close = difflib.get_close_matches(str(key), known, n=1)
            hint = f"; did you mean {prefix + close[0]!r}?" if close else ""
            listed = ", ".join(known)
            msg = f"manifest {source!r}: unknown key {name!r}{hint} (known here: {listed})"
            raise SettingsError(msg)
        sub = _submodel(model, key)
        if sub is not None:
            if not isinstance(value, dict):
                msg = f"manifest {source!r}: {name!r} must be a mapping of its settings"
                raise SettingsError(msg)
            _check_keys(value, sub, prefix=f"{name}.", source=source)


def _submodel(model: type[BaseModel], key: str) -> type[BaseModel] | None:
    annotation = model.model_fields[key].annotation
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    return None


def _env_vars(model: type[BaseModel], key: str) -> tuple[str, ...]:
    """The variables a field reads: its ``env`` extra, one name or a list of names."""
    extra = model.model_fields[key].json_schema_extra
    if isinstance(extra, dict):
        var = extra.get("env")
        if isinstance(var, str):
            return (var,)
        if isinstance(var, list):
            return tuple(v for v in var if isinstance(v, str))
    return ()


def merge_layers(
    model: type[BaseModel],
    lower: Sequence[Mapping[str, Any]],
    explicit: Mapping[str, Any],
) -> dict[str, Any]:
    """Merge layers into constructor arguments for ``model``.

    ``lower`` lists layers that rank below the environment, lowest first (for
    example mapped defaults, then a manifest). A key bound to an environment
    variable that is set is dropped from them, so the field's own default reads
    the variable. ``explicit`` ranks above everything; a settings object in it
    contributes only the fields that were passed to it explicitly.
    """
    merged: dict[str, Any] = {}
    for layer in lower:
        for key, value in layer.items():
            if any(os.environ.get(var) for var in _env_vars(model, key)):
                continue
            sub = _submodel(model, key)
            if sub is not None and isinstance(value, Mapping):
                previous = merged.get(key, {})
                merged[key] = merge_layers(sub, [previous, value], {})
            else:
                merged[key] = value
    for key, value in explicit.items():
        sub = _submodel(model, key)
        if sub is not None and isinstance(value, BaseModel | Mapping):
            overlay = (
                {name: getattr(value, name) for name in value.model_fields_set}
                if isinstance(value, BaseModel)
                else value
            )
            merged[key] = merge_layers(sub, [merged.get(key, {})], overlay)
        else:
            merged[key] = value
    return merged
