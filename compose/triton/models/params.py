"""Reading a request's KServe v2 `parameters` (string, int, bool or double), forgiving of strings."""

from __future__ import annotations


def get(request, name: str, default=None):
    value = (request.parameters or {}).get(name)
    return default if value is None or value == "" else value


def as_float(request, name: str, default: float | None) -> float | None:
    value = get(request, name)
    if value is None:
        return default
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ValueError(f"parameter {name!r} must be a number, not {value!r}") from None


def as_bool(request, name: str, default: bool = False) -> bool:
    value = get(request, name)
    if value is None:
        return default
    if isinstance(value, str):
        if value.lower() in ("true", "1", "yes"):
            return True
        if value.lower() in ("false", "0", "no"):
            return False
        raise ValueError(f"parameter {name!r} must be a boolean, not {value!r}")
    return bool(value)


def as_str(request, name: str, default: str | None = None) -> str | None:
    value = get(request, name)
    return default if value is None else str(value)


def text(request, name: str) -> str:
    """The first element of a BYTES input, as text."""
    value = request.data[name].reshape(-1)[0]
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
