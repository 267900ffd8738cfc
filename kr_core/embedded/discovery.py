"""OpenAPI documents, just enough for kubectl.

kubectl 1.32 fetches ``/openapi/v3`` to learn whether the server validates fields itself (the
``fieldValidation`` query parameter on PATCH operations); if it does not find that, it falls back to
client-side validation against ``/openapi/v2`` and fails when that is missing. So the v3 documents
list, per group-version, the PATCH operations tagged with ``x-kubernetes-group-version-kind`` and the
``fieldValidation`` parameter. They carry no schemas, so ``kubectl apply`` computes its strategic
merge patches from its compiled-in types. ``/openapi/v2`` answers 404.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from kr_core.embedded.resources import RESOURCES, SERVER_VERSION, Resource


def openapi_v2() -> Any:
    return None


def _gv_path(group: str, version: str) -> str:
    return f"apis/{group}/{version}" if group else f"api/{version}"


def _gvs() -> list[tuple[str, str]]:
    seen: list[tuple[str, str]] = []
    for r in RESOURCES:
        if (r.group, r.version) not in seen:
            seen.append((r.group, r.version))
    return seen


def openapi_v3_root() -> dict[str, Any]:
    paths = {}
    for g, v in _gvs():
        doc = openapi_v3_group(_gv_path(g, v))
        digest = hashlib.sha512(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:32].upper()
        paths[_gv_path(g, v)] = {"serverRelativeURL": f"/openapi/v3/{_gv_path(g, v)}?hash={digest}"}
    return {"paths": paths}


def _params() -> list[dict[str, Any]]:
    return [
        {"name": "dryRun", "in": "query", "schema": {"type": "string", "uniqueItems": True}},
        {"name": "fieldManager", "in": "query", "schema": {"type": "string", "uniqueItems": True}},
        {"name": "fieldValidation", "in": "query", "schema": {"type": "string", "uniqueItems": True}},
        {"name": "force", "in": "query", "schema": {"type": "boolean", "uniqueItems": True}},
    ]


def _item_path(r: Resource) -> str:
    base = "/" + _gv_path(r.group, r.version)
    if r.namespaced:
        return f"{base}/namespaces/{{namespace}}/{r.plural}/{{name}}"
    return f"{base}/{r.plural}/{{name}}"


def openapi_v3_group(path: str) -> dict[str, Any] | None:
    """The OpenAPI v3 document for ``api/v1`` or ``apis/<group>/<version>``, or None."""
    paths: dict[str, Any] = {}
    for r in RESOURCES:
        if _gv_path(r.group, r.version) != path.strip("/"):
            continue
        gvk = {"group": r.group, "version": r.version, "kind": r.kind}
        op = {
            "tags": [f"{r.group or 'core'}_{r.version}"],
            "operationId": f"patch{r.kind}",
            "parameters": _params(),
            "responses": {"200": {"description": "OK"}},
            "x-kubernetes-action": "patch",
            "x-kubernetes-group-version-kind": gvk,
        }
        paths[_item_path(r)] = {
            "patch": op,
            "parameters": [{"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}],
        }
    if not paths:
        return None
    return {
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": SERVER_VERSION["gitVersion"]},
        "paths": paths,
        "components": {},
    }
