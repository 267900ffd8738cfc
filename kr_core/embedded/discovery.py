"""OpenAPI documents. kubectl asks for ``/openapi/v3`` (field validation support, apply patch metadata)
and falls back to ``/openapi/v2``; None means 404."""

from __future__ import annotations

from typing import Any


def openapi_v2() -> Any:
    return None


def openapi_v3_root() -> Any:
    return None


def openapi_v3_group(path: str) -> Any:
    return None
