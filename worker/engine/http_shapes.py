"""SGLang's HTTP error shapes (sglang-api.md §1) and request-body parsing for the embedded engine."""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web


def error_response(message: str, status: int = 400) -> web.Response:
    """A request rejected while running (prompt too long, bad sampling params): ``{"error": {...}}``."""
    return web.json_response({"error": {"message": message}}, status=status)


def bad_request(message: str) -> web.Response:
    """A body that fails type parsing: the OpenAI-style ErrorResponse SGLang returns."""
    body = {"object": "error", "message": message, "type": "Bad Request", "param": None, "code": 400}
    return web.json_response(body, status=400)


async def json_body(request: web.Request, required: bool) -> dict[str, Any]:
    """The JSON object of a request; 400 ``{"error": "<text>"}`` when missing (if required) or invalid."""
    text = await request.text()
    if not text.strip():
        if required:
            raise web.HTTPBadRequest(text=json.dumps({"error": "a JSON body is required"}),
                                     content_type="application/json")
        return {}
    try:
        body = json.loads(text)
    except json.JSONDecodeError as e:
        raise web.HTTPBadRequest(text=json.dumps({"error": f"invalid JSON: {e}"}),
                                 content_type="application/json") from e
    return body if isinstance(body, dict) else {"_list": body}
