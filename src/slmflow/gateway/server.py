"""Running the gateway: `serve` (blocking, for ``slmflow serve``) and `GatewayServer` (uvicorn in
a background thread on loopback, for tests, benchmarks and notebooks)."""

from __future__ import annotations

import threading
import time
from typing import Any

from ..errors import ServerUnreachableError
from .app import Gateway
from .config import GatewayConfig, load_config

__all__ = ["serve", "GatewayServer"]


def _uvicorn_config(app: Any, host: str, port: int, log_level: str) -> Any:
    import uvicorn

    return uvicorn.Config(app, host=host, port=port, log_level=log_level, access_log=False,
                          timeout_graceful_shutdown=30, lifespan="on")


def serve(config: GatewayConfig | str, *, host: str | None = None, port: int | None = None,
          log_level: str = "info", **kwargs: Any) -> None:
    """Serve until interrupted; on shutdown the call log is drained before exit."""
    import uvicorn

    cfg = load_config(config) if isinstance(config, str) else config
    gw = Gateway(cfg, **kwargs)
    uvicorn.Server(_uvicorn_config(gw.app, host or cfg.host, port if port is not None
                                   else cfg.port, log_level)).run()


class GatewayServer:
    """``with GatewayServer(gateway, port=p) as s: s.url`` → ``http://127.0.0.1:p/v1``."""

    def __init__(self, gateway: Gateway, *, host: str = "127.0.0.1", port: int = 0,
                 log_level: str = "warning") -> None:
        import uvicorn

        if port == 0:
            import socket

            with socket.socket() as s:
                s.bind((host, 0))
                port = s.getsockname()[1]
        self.gateway, self.host, self.port = gateway, host, port
        self.server = uvicorn.Server(_uvicorn_config(gateway.app, host, port, log_level))
        self.server.install_signal_handlers = lambda: None  # type: ignore[method-assign]
        self._thread = threading.Thread(target=self._run, name="slmflow-gateway", daemon=True)

    def _run(self) -> None:
        try:
            self.server.run()
        except SystemExit:  # uvicorn exits when it cannot bind; start() reports it
            pass

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def url(self) -> str:
        return f"{self.base_url}/v1"

    def start(self, timeout: float = 120.0) -> "GatewayServer":
        self._thread.start()
        deadline = time.time() + timeout
        while not self.server.started:
            if not self._thread.is_alive():
                raise ServerUnreachableError("the gateway failed to start", where=self.base_url)
            if time.time() > deadline:
                raise ServerUnreachableError("the gateway did not start in time",
                                             where=self.base_url)
            time.sleep(0.02)
        return self

    def stop(self, timeout: float = 60.0) -> None:
        self.server.should_exit = True
        self._thread.join(timeout)

    def __enter__(self) -> "GatewayServer":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()
