"""ASGI middleware for the BentoML service."""

import json
from typing import Any


class JsonBodyGuard:
    """ASGI middleware: a body that is not JSON gets the usual 400 on the batchable endpoints.

    BentoML 1.4 parses a batchable endpoint's root-list body with ``json.loads`` outside its
    validation handler, so malformed JSON (or a body of whitespace) there would be a 500; the other
    endpoints are unaffected. The body is read once here and handed on unchanged."""

    def __init__(self, app: Any, paths: frozenset[str]) -> None:
        self.app, self.paths = app, paths

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope.get("method") != "POST" or scope.get("path") not in self.paths:
            await self.app(scope, receive, send)
            return
        messages, body = [], b""
        while True:
            message = await receive()
            messages.append(message)
            if message["type"] != "http.request":
                break
            body += message.get("body", b"")
            if not message.get("more_body", False):
                break
        try:
            if body:  # whitespace alone is not JSON either (BentoML would 500 on it)
                json.loads(body)
        except ValueError as exc:
            from starlette.responses import JSONResponse

            name = scope["path"].strip("/")
            detail = [{"type": "json_invalid", "loc": [], "msg": f"Invalid JSON: {exc}"}]
            response = JSONResponse(
                {"error": f"1 validation error for {name} request", "detail": detail}, status_code=400
            )
            await response(scope, receive, send)
            return

        async def replay() -> Any:
            return messages.pop(0) if messages else await receive()

        await self.app(scope, replay, send)
