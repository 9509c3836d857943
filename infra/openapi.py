"""The form of an OpenAPI 3.0 document, the same for both servers.

Each server writes its own document by hand (``proxy.serving.openapi``, ``jobserver.openapi``),
stating its own routes, limits and request rules; what is here is only their common
form: the document's frame, references, JSON bodies, error answers in the shape of
:mod:`infra.errors`, and the routes every server has (``/healthz``, ``/openapi.json``).
"""

from __future__ import annotations

from typing import Any

OPENAPI_VERSION = "3.0.3"
API_VERSION = "0.1.0"
JSON = "application/json"


def ref(name: str) -> dict[str, str]:
    """A reference to the schema ``name`` of the document's components."""
    return {"$ref": f"#/components/schemas/{name}"}


def json_content(schema: dict[str, Any], description: str, **extra: Any) -> dict[str, Any]:
    """An answer or body of ``schema``, in JSON."""
    return {"description": description, "content": {JSON: {"schema": schema}}, **extra}


def retry_after(*, minimum: int, required: bool) -> dict[str, Any]:
    """The ``Retry-After`` header of an answer that asks the client to come back later."""
    header: dict[str, Any] = {"description": "seconds to wait before trying again"}
    if required:
        header["required"] = True
    header["schema"] = {"type": "integer", "minimum": minimum}
    return header


def error(
    description: str, *, retry_after: dict[str, Any] | None = None, schema: str = "Error"
) -> dict[str, Any]:
    """An error answer of ``schema``, with the ``retry_after`` header (see
    :func:`retry_after`) when given."""
    if retry_after is None:
        return json_content(ref(schema), description)
    return json_content(ref(schema), description, headers={"Retry-After": retry_after})


def error_schema(**properties: Any) -> dict[str, Any]:
    """The schema of :func:`infra.errors.error_body`, with a server's own ``properties``."""
    return {
        "type": "object",
        "required": ["error", "detail"],
        "properties": {
            "error": {"type": "string", "description": "a short machine word"},
            "detail": {"type": "string", "description": "a human sentence"},
            **properties,
        },
    }


def liveness_route(description: str, schema: str = "Health") -> dict[str, Any]:
    """``GET /healthz``: answered while the process runs."""
    return {
        "get": {
            "summary": "Liveness",
            "operationId": "healthz",
            "responses": {"200": json_content(ref(schema), description)},
        }
    }


def document_route() -> dict[str, Any]:
    """``GET /openapi.json``: the document itself."""
    return {
        "get": {
            "summary": "This document",
            "operationId": "openapi",
            "responses": {"200": json_content({"type": "object"}, "the OpenAPI document")},
        }
    }


def document(
    title: str, description: str, paths: dict[str, Any], components: dict[str, Any]
) -> dict[str, Any]:
    """The whole document: its frame around a server's ``paths`` and ``components``."""
    return {
        "openapi": OPENAPI_VERSION,
        "info": {"title": title, "version": API_VERSION, "description": description},
        "paths": paths,
        "components": components,
    }
