"""Triton's model repository extension (service.repository does the work). Admin endpoints: they
take `Authorization: Bearer <admin_token>` (not the inference `auth_token`); with no admin_token
set they answer 403, so a server is never reconfigured over the network unless its operator asked.
Bodies are parsed by hand: tritonclient sends no Content-Type (and an empty body for the index)."""

from __future__ import annotations

import hmac
from typing import Any

from fastapi import APIRouter, Depends, Request, Response
from pydantic_core import from_json

from service.errors import BadRequest, Forbidden, Unauthorized, error_docs
from service.repository import Repository
from service.routes.deps import engine_of

router = APIRouter(prefix="/v2/repository", tags=["model repository (admin)"])
_INDEX_EXAMPLE = [
    {"name": "digits", "version": "1", "state": "READY", "reason": ""},
    {"name": "digits", "version": "2", "state": "UNAVAILABLE", "reason": "not loaded"},
]
_ERRORS = (400, 401, 403, 404, 503)


async def admin(request: Request) -> Repository:
    """The repository, for a request carrying the admin bearer token (401 without, 403 if unset)."""
    token = engine_of(request).settings.admin_token
    if token is None:
        raise Forbidden(
            "the model repository endpoints are disabled: set admin_token (CIRCUITSERVE_ADMIN_TOKEN)"
        )
    scheme, _, credentials = request.headers.get("authorization", "").partition(" ")
    given = credentials.strip().encode("utf-8", "replace")
    if not (
        hmac.compare_digest(given, token.get_secret_value().strip().encode()) and scheme.lower() == "bearer"
    ):
        raise Unauthorized("missing or wrong admin bearer token")
    repository = request.app.state.repository
    assert isinstance(repository, Repository)
    return repository


async def _body(request: Request) -> dict[str, Any]:
    raw = await request.body()
    if not raw.strip():
        return {}
    try:
        doc = from_json(raw)
    except ValueError as exc:
        raise BadRequest(f"request body is not valid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise BadRequest("request body must be a JSON object")
    return doc


@router.post(
    "/index",
    responses={200: {"content": {"application/json": {"example": _INDEX_EXAMPLE}}}, **error_docs(*_ERRORS)},
)
async def index(request: Request, repo: Repository = Depends(admin)) -> list[dict[str, Any]]:
    """Every bundle under the repository and every served model version: name, version, state
    (READY, UNAVAILABLE, LOADING, UNLOADING), reason. Body `{"ready": true}`: ready ones only."""
    ready = (await _body(request)).get("ready", False)
    if not isinstance(ready, bool):
        raise BadRequest(f"'ready' must be true or false, got {ready!r}")
    return repo.index(ready_only=ready)


@router.post("/models/{name}/load", responses=error_docs(*_ERRORS))
async def load(name: str, request: Request, repo: Repository = Depends(admin)) -> dict[str, Any]:
    """Serve every version of the model found under the repository: checksums verified, new
    versions warmed up, then switched to in one step (the highest version is the default).
    Answers when they serve. Config and file overrides (Triton's `parameters`) are refused."""
    params = (await _body(request)).get("parameters") or {}
    if not isinstance(params, dict):
        raise BadRequest("'parameters' must be a JSON object")
    if params:
        raise BadRequest(
            f"load parameters are not supported (got {sorted(params)}): bundles are loaded as exported"
        )
    return {"name": name, "versions": await repo.load(name)}


@router.post("/models/{name}/unload", responses=error_docs(*_ERRORS))
async def unload(name: str, request: Request, repo: Repository = Depends(admin)) -> Response:
    """Stop routing to the model (404 from then on), let its queued work finish (up to
    drain_timeout_s), then drop it; answers once it is dropped. `unload_dependents` is accepted
    (a bundle has no dependents)."""
    await _body(request)
    await repo.unload(name)
    return Response(status_code=200)
