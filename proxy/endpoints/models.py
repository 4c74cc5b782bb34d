"""GET /v1/models and /v1/models/{id} from the catalog, as far as the key's model globs reach (a model
outside them answers 404, as one that does not exist)."""

from __future__ import annotations

import msgspec
from starlette.requests import Request
from starlette.responses import Response

from schemas.errors import NotFound
from orchestration.model_registry import CatalogView
from proxy.runtime import Runtime
from schemas.openai import Model, ModelList

_encoder = msgspec.json.Encoder()


def _model(entry, name: str = "") -> Model:
    return Model(id=name or entry.id, created=entry.created, owned_by=entry.owned_by)


async def list_models(request: Request) -> Response:
    """The catalog's models and the live aliases (a tenant-only one for its tenant alone)."""
    rt: Runtime = request.app.state.runtime
    principal = request.state.principal
    catalog = rt.catalog
    named = (catalog.current.visible_to(principal.tenant) if isinstance(catalog, CatalogView)
             else [(m.id, m) for m in catalog.models if not m.tenant or m.tenant == principal.tenant])
    body = ModelList(data=[_model(m, name) for name, m in named if principal.allows_model(m.id)])
    return Response(_encoder.encode(body), media_type="application/json")


async def get_model(request: Request) -> Response:
    rt: Runtime = request.app.state.runtime
    name = request.path_params["model"]
    principal = request.state.principal
    entry = rt.catalog.get(name)
    if entry is None or not principal.allows_model(entry.id) or entry.tenant not in ("", principal.tenant):
        raise NotFound(f"The model '{name}' does not exist.", param="model", code="model_not_found")
    alias = isinstance(rt.catalog, CatalogView) and name in rt.catalog.current.aliases
    return Response(_encoder.encode(_model(entry, name if alias else "")), media_type="application/json")
