"""Loads model_catalog.yaml into frozen structs, once, with errors that name the bad field."""

from __future__ import annotations

import os
import re
from pathlib import Path

import msgspec
import yaml

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
    try:
        data = yaml.safe_load(_substitute(text))
    except yaml.YAMLError as exc:
        raise CatalogError(f"{source}: not valid YAML: {exc}") from None
    try:
        catalog = msgspec.convert(data, Catalog)
    except msgspec.ValidationError as exc:
        raise CatalogError(f"{source}: {exc}") from None
    ids = [m.id for m in catalog.models]
    dupes = sorted({i for i in ids if ids.count(i) > 1})
    if dupes:
        raise CatalogError(f"{source}: duplicate model id(s) at `$.models[*].id`: {', '.join(dupes)}")
    return catalog


def load_catalog(path: str | os.PathLike[str]) -> Catalog:
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as exc:
        raise CatalogError(f"cannot read model catalog {p}: {exc.strerror}") from None
    return parse_catalog(text, str(p))
