"""GET /v1/models and /v1/models/{id} from the catalog, as far as the key's model globs reach (a model
outside them answers 404, as one that does not exist)."""

from __future__ import annotations

import msgspec
from starlette.requests import Request
from starlette.responses import Response

from schemas.errors import NotFound
from proxy.runtime import Runtime
from schemas.openai import Model, ModelList

_encoder = msgspec.json.Encoder()


def _model(entry) -> Model:
    return Model(id=entry.id, created=entry.created, owned_by=entry.owned_by)


async def list_models(request: Request) -> Response:
    rt: Runtime = request.app.state.runtime
    principal = request.state.principal
    body = ModelList(data=[_model(m) for m in rt.catalog.models if principal.allows_model(m.id)])
    return Response(_encoder.encode(body), media_type="application/json")


async def get_model(request: Request) -> Response:
    rt: Runtime = request.app.state.runtime
    entry = rt.catalog.get(request.path_params["model"])
    if entry is None or not request.state.principal.allows_model(entry.id):
        raise NotFound(f"The model '{request.path_params['model']}' does not exist.",
                       param="model", code="model_not_found")
    return Response(_encoder.encode(_model(entry)), media_type="application/json")
