"""What stands between a request and the model: the bearer-token check, the body-size
limit, and one error shape (OpenAI's) for every refusal, so clients see a 4xx JSON with a
clear message rather than a 5xx or a dropped connection."""

from __future__ import annotations

import hmac
import json
import logging
from typing import Any

from embedrag.engine.core.errors import redact

logger = logging.getLogger("embedrag.serve")


class APIError(Exception):
    """A refusal with an HTTP status, answered as ``{"error": {...}}``."""

    def __init__(self, status: int, message: str, *, code: str | None = None, param: str | None = None,
                 kind: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.code, self.param, self.kind = status, message, code, param, kind

    def body(self) -> dict[str, Any]:
        return error_body(self.message, kind=self.kind, code=self.code, param=self.param)


def error_body(message: str, *, kind: str = "invalid_request_error", code: str | None = None,
               param: str | None = None) -> dict[str, Any]:
    return {"error": {"message": redact(message), "type": kind, "param": param, "code": code}}


def bearer_token_matches(authorization: str | None, expected: str) -> bool:
    """Whether an ``Authorization`` header carries ``Bearer <expected>``, compared in
    constant time so the answer's timing tells nothing about the key."""
    scheme, _, token = (authorization or "").partition(" ")
    if scheme.lower() != "bearer":
        token = ""
    return hmac.compare_digest(token.strip().encode("utf-8"), expected.encode("utf-8"))


def validation_message(errors: list[dict[str, Any]]) -> tuple[str, str | None]:
    """One line from pydantic's error list: the first problem and the field it is in."""
    if not errors:
        return "invalid request", None
    first = errors[0]
    location = [str(part) for part in first.get("loc", ()) if part != "body"]
    field = location[0] if location else None
    kind = first.get("type", "")
    if kind == "json_invalid":
        return "the body is not valid JSON", None
    if not location and kind in ("model_attributes_type", "dict_type"):
        return "the body must be a JSON object (Content-Type: application/json)", None
    if kind == "missing":
        return f"{'.'.join(location)} is required", field
    if kind == "extra_forbidden":
        return f"unknown field {'.'.join(location)!r}", field
    where = ".".join(p for p in location if not p.startswith(("str", "list[", "int"))) or "body"
    return f"{where}: {first.get('msg', 'invalid value')}", field


class _TooLarge(Exception):
    pass


class BodyLimit:
    """ASGI middleware: a body over ``max_bytes`` (declared or streamed) gets a 413 before
    anything reads it whole."""

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or ()).get(b"content-length")
        if declared is not None:
            if not declared.isdigit():
                return await send_json(send, 400, error_body("Content-Length is not a number"))
            if int(declared) > self.max_bytes:
                return await send_json(send, 413, self._too_large())
        received, started = 0, False

        async def limited_receive():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise _TooLarge
            return message

        async def tracking_send(message):
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except _TooLarge:
            if started:
                raise
            await send_json(send, 413, self._too_large())

    def _too_large(self) -> dict[str, Any]:
        return error_body(f"the request body is over the server's limit of {self.max_bytes:,} bytes",
                          code="request_too_large")


async def send_json(send, status: int, body: dict[str, Any]) -> None:
    payload = json.dumps(body).encode("utf-8")
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]})
    await send({"type": "http.response.body", "body": payload})
