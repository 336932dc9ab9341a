"""ASGI middleware for the BentoML service: request bodies BentoML itself would mishandle get the service's
usual error body (:class:`m6rec.serving.schemas.ErrorBody`) instead of a 500 or an odd message."""

import json
from typing import Any

# Media types BentoML 1.4 does not read as JSON (``_bentoml_impl.serde.ALL_SERDE``); any other
# Content-Type, or none, is parsed as JSON, which is what every endpoint takes.
NOT_JSON_MEDIA_TYPES = frozenset(
    {"multipart/form-data", "application/x-www-form-urlencoded", "application/vnd.bentoml+pickle"}
)


def _error_response(scope: Any, status: int, kind: str, message: str) -> Any:
    from starlette.responses import JSONResponse

    name = scope["path"].strip("/")
    detail = [{"type": kind, "loc": [], "msg": message}]
    return JSONResponse(
        {"error": f"1 validation error for {name} request", "detail": detail}, status_code=status
    )


class JsonBodyGuard:
    """ASGI middleware for the API routes (``POST``):

    * a form, multipart or pickle body gets HTTP 415 naming the media type. BentoML 1.4 would hand a
      multipart body to a JSON model and answer 500, a form body would become a confusing 400, and a pickle
      body a 415 whose body is a list; the service only speaks JSON;
    * on ``json_paths`` (the batchable endpoints) a body that is not JSON gets the usual 400. BentoML 1.4
      parses a batchable endpoint's root-list body with ``json.loads`` outside its validation handler, so
      malformed JSON (or a body of whitespace) there would be a 500; the other endpoints are unaffected.
      The body is read once here and handed on unchanged."""

    def __init__(self, app: Any, paths: frozenset[str], json_paths: frozenset[str]) -> None:
        self.app, self.paths, self.json_paths = app, paths, json_paths

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope.get("method") != "POST" or scope.get("path") not in self.paths:
            await self.app(scope, receive, send)
            return
        media_type = self._media_type(scope)
        if media_type in NOT_JSON_MEDIA_TYPES:
            response = _error_response(
                scope,
                415,
                "unsupported_media_type",
                f"Content-Type {media_type} is not accepted: send a JSON body (application/json)",
            )
            await response(scope, receive, send)
            return
        if scope["path"] not in self.json_paths:
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
            response = _error_response(scope, 400, "json_invalid", f"Invalid JSON: {exc}")
            await response(scope, receive, send)
            return

        async def replay() -> Any:
            return messages.pop(0) if messages else await receive()

        await self.app(scope, replay, send)

    @staticmethod
    def _media_type(scope: Any) -> str:
        """The request's media type exactly as BentoML reads it: the first Content-Type before any ``;``
        parameters, case kept (BentoML matches it case-sensitively)."""
        for name, value in scope.get("headers", []):
            if name.lower() == b"content-type":
                return value.decode("latin-1").split(";")[0].strip()
        return "application/json"
