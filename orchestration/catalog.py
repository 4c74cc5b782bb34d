"""Loads model_catalog.yaml into frozen structs, once, with errors that name the bad field."""

from __future__ import annotations

import os
import re
from pathlib import Path

import msgspec
import yaml

from adapters.registry import engine_capabilities
from schemas.catalog import Catalog

_ENV = re.compile(r"\$\{([A-Z0-9_]+)(?::-([^}]*))?\}")


class CatalogError(ValueError):
    pass


def _substitute(text: str) -> str:
    def repl(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(2)
        value = os.environ.get(name)
        if value is None:
            if default is None:
                raise CatalogError(f"environment variable {name} is not set and has no default")
            return default
        return value

    return _ENV.sub(repl, text)


def parse_catalog(text: str, source: str = "<catalog>") -> Catalog:
    text = _substitute(text)
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise CatalogError(f"{source}: not valid YAML: {exc}") from None
    try:
        catalog = msgspec.convert(data, Catalog)
    except msgspec.ValidationError as exc:
        message = str(exc)
        raise CatalogError(f"{_where(source, text, message)}: {message}") from None
    seen: dict[str, str] = {}
    for i, m in enumerate(catalog.models):
        names = [(m.id, f"$.models[{i}].id")]
        names += [(a, f"$.models[{i}].aliases[{j}]") for j, a in enumerate(m.aliases)]
        for name, path in names:
            if name in seen:
                where = _where(source, text, f"`{path}`")
                raise CatalogError(f"{where}: duplicate model name {name!r} at `{path}` "
                                   f"(already at `{seen[name]}`; ids and aliases share one namespace)")
            seen[name] = path
    for i, m in enumerate(catalog.models):
        if m.engine is not None:
            try:
                engine_capabilities(m.engine)
            except ValueError as exc:  # a capability its engine kind lacks: refused here, not per request
                path = f"$.models[{i}].engine.capabilities"
                raise CatalogError(f"{_where(source, text, f'`{path}`')}: {exc} (at `{path}`)") from None
        for j, stage in enumerate(m.pipeline[1:], 1):
            target = catalog.get(stage.model)
            if target is not None and target.engine is not None and "chat" not in engine_capabilities(target.engine):
                path = f"$.models[{i}].pipeline[{j}].model"
                raise CatalogError(f"{_where(source, text, f'`{path}`')}: stage {stage.name!r} runs a chat on the "
                                   f"previous stage's text, but {stage.model!r} cannot chat (at `{path}`)")
    return catalog


_PATH = re.compile(r"`(\$[^`]*)`")
_STEP = re.compile(r"\.([A-Za-z_][A-Za-z0-9_]*)|\[(\d+)\]")


def _where(source: str, text: str, message: str) -> str:
    """`source:line` of the node a msgspec path (`$.models[0].engine.url`) in `message` points at,
    as deep as the YAML goes (an unknown field: that field's key); just `source` if none is found."""
    found = _PATH.search(message)
    try:
        node = yaml.compose(text)
    except yaml.YAMLError:
        return source
    if found is None or node is None:
        return source
    steps: list[str | int] = [int(i) if i else name for name, i in _STEP.findall(found.group(1))]
    unknown = re.search(r"unknown field `([^`]+)`", message)
    if unknown:
        steps.append(unknown.group(1))
    for n, step in enumerate(steps):
        child = None
        if isinstance(node, yaml.MappingNode) and isinstance(step, str):
            pair = next(((k, v) for k, v in node.value if k.value == step), None)
            if pair is not None:
                child = pair[0] if n == len(steps) - 1 else pair[1]  # the field's own line
        elif isinstance(node, yaml.SequenceNode) and isinstance(step, int) and step < len(node.value):
            child = node.value[step]
        if child is None:
            break
        node = child
    return f"{source}:{node.start_mark.line + 1}"


def load_catalog(path: str | os.PathLike[str]) -> Catalog:
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as exc:
        raise CatalogError(f"cannot read model catalog {p}: {exc.strerror}") from None
    return parse_catalog(text, str(p))
