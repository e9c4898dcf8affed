"""Servers for the serve tests: embedrag's app under uvicorn in a thread, a fake
OpenAI-compatible chat server, and small JSON/SSE clients on urllib."""

from __future__ import annotations

import http.server
import json
import socket
import threading
import time
import urllib.error
import urllib.request
from contextlib import contextmanager


@contextmanager
def running_app(config):
    """Load ``config`` (a ServeConfig), serve it on a free loopback port, yield (url, state)."""
    import uvicorn

    from embedrag.engine.serve import create_app, load_state
    from embedrag.engine.serve.runner import bind

    state = load_state(config)
    listener = bind("127.0.0.1", 0)
    server = uvicorn.Server(uvicorn.Config(create_app(state), log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [listener]}, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{listener.getsockname()[1]}"
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the server did not start")
        time.sleep(0.02)
    try:
        yield url, state
    finally:
        server.should_exit = True
        thread.join(30)


def request(url: str, body=None, *, method: str | None = None, headers: dict | None = None,
            raw: bytes | None = None, timeout: float = 60):
    """(status, parsed JSON or text, headers) for one request; never raises on 4xx/5xx."""
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    all_headers = {"Content-Type": "application/json", **(headers or {})}
    req = urllib.request.Request(url, data=data, method=method or ("POST" if data is not None else "GET"),
                                 headers=all_headers)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as response:
            status, text, got = response.status, response.read().decode(), dict(response.headers)
    except urllib.error.HTTPError as exc:
        status, text, got = exc.code, exc.read().decode(), dict(exc.headers)
    try:
        return status, json.loads(text), got
    except ValueError:
        return status, text, got


def events(text: str) -> list[tuple[str, dict]]:
    """The (event, data) pairs of a text/event-stream body."""
    pairs = []
    for block in text.strip().split("\n\n"):
        lines = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line)
        pairs.append((lines.get("event", "message"), json.loads(lines["data"])))
    return pairs


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class FakeChat:
    """An OpenAI-compatible chat server on 127.0.0.1 that streams ``pieces`` (``delay``
    seconds apart; joined in one JSON reply when the request does not stream) and records
    each request."""

    def __init__(self, pieces=("Noodles are best at ", "the market [1]", " and the shop [2]."), delay=0.0):
        self.pieces, self.delay, self.requests = list(pieces), delay, []
        fake = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - http.server naming
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                fake.requests.append({"path": self.path, "body": body, "auth": self.headers.get("Authorization")})
                if not body.get("stream"):  # one JSON reply
                    reply = json.dumps({"id": "x", "object": "chat.completion", "created": 0, "model": "m",
                                        "choices": [{"index": 0, "finish_reason": "stop", "message": {
                                            "role": "assistant", "content": "".join(fake.pieces)}}]}).encode()
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(reply)))
                    self.end_headers()
                    self.wfile.write(reply)
                    return
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.end_headers()
                for piece in fake.pieces:
                    time.sleep(fake.delay)
                    event = {"id": "x", "object": "chat.completion.chunk", "created": 0, "model": "m",
                             "choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": None}]}
                    self.wfile.write(f"data: {json.dumps(event)}\n\n".encode())
                    self.wfile.flush()
                self.wfile.write(b"data: [DONE]\n\n")

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def __enter__(self):
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()
