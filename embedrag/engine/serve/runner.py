"""Run the app under uvicorn until SIGTERM or SIGINT; requests in flight finish first."""

from __future__ import annotations

import socket
from collections.abc import Callable

from embedrag.engine.core.errors import ConfigError
from embedrag.engine.serve.config import ServeConfig
from embedrag.engine.serve.state import ServerState, load_state

GRACEFUL_SHUTDOWN_S = 30


def serve(config: ServeConfig, *, on_ready: Callable[[ServerState, str], None] | None = None,
          access_log: bool = True, log_level: str = "info") -> None:
    """Load everything once, bind ``config.host``:``config.port`` (0: any free port), call
    ``on_ready(state, url)`` and answer until a signal stops the server."""
    try:
        import fastapi  # noqa: F401
        import uvicorn
    except ImportError:
        raise ConfigError("embedrag serve needs FastAPI and uvicorn: pip install 'embedrag[serve]'") from None

    from embedrag.engine.serve.app import create_app

    _GracefulServer = _graceful_server_class()
    state = load_state(config)
    listener = bind(config.host, config.port)
    host, port = listener.getsockname()[:2]
    url = f"http://{'[' + host + ']' if ':' in host else host}:{port}"
    server = _GracefulServer(uvicorn.Config(
        create_app(state), log_level=log_level, access_log=access_log, lifespan="on",
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S, server_header=False))
    if on_ready is not None:
        on_ready(state, url)
    server.run(sockets=[listener])


def _graceful_server_class():
    import uvicorn

    class GracefulServer(uvicorn.Server):
        """uvicorn re-raises SIGTERM/SIGINT once it has drained; a drained server here
        returns normally instead, so a signalled stop exits 0."""

        def handle_exit(self, sig, frame) -> None:
            super().handle_exit(sig, frame)
            captured = getattr(self, "_captured_signals", None)
            if isinstance(captured, list):
                captured.clear()

    return GracefulServer


def bind(host: str, port: int) -> socket.socket:
    """A listening-ready socket, or a one-line error (port in use, unknown host)."""
    try:
        family, kind, protocol = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][:3]
        # The protocol must be IPPROTO_TCP: asyncio sets TCP_NODELAY on accepted connections
        # only then, and without it Nagle's algorithm holds every reply ~40 ms for the ACK.
        listener = socket.socket(family, kind, protocol or socket.IPPROTO_TCP)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((host, port))
    except OSError as exc:
        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    return listener
