"""One configuration file that moves slmflow's state from one machine to shared servers.

Why environment variables underneath: every store already reads its location from one place at
the moment it opens (the call log ``$SLMFLOW_CALLS_URL``, tracing ``OTEL_EXPORTER_OTLP_ENDPOINT``,
everything else ``$SLMFLOW_HOME``), in every process: the CLI, the gateway, Ray workers (which
inherit ``SLMFLOW_*``/``OTEL_*`` from the driver, see `slmflow.scale.distributed`). So the file is
a readable, versioned front for those variables; `apply_config` sets them (explicit environment
variables win over the file), and ``SLMFLOW_CONFIG=/etc/slmflow/deploy.yaml`` is the one thing
to set on every machine. Nothing is opened or connected here; `check` does that on demand.

    # deploy.yaml
    home: /srv/slmflow                         # adapters/, indexes/ metadata, models/, spans.db
    call_log: postgresql://slm@db:5432/slmflow # call log, review queue, feedback, API keys
    vectors: chroma://chroma:8000/support       # vector store for indexes (Chroma server)
    tracing:
      otlp_endpoint: http://collector:4318      # OTLP/HTTP (or grpc, with protocol: grpc)
      protocol: http
      capture_content: false
    ray: 10.0.0.5:6379                          # default for --ray env (SLMFLOW_RAY_ADDRESS)
    llama_threads: 1                            # SLMFLOW_LLAMA_THREADS

What does not move (honestly): the adapter registry is files under ``home/adapters`` (put
``home`` on a shared file system, or deploy adapters with `slmflow deploy`), and the local span
store is SQLite under ``home`` (at scale, export spans over OTLP to a collector instead). An
index's chunk text and metadata stay in its SQLite file under ``home/indexes``; only its vectors
live on the Chroma server.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ConfigError

__all__ = ["ScaleConfig", "load_config", "apply_config", "ENV_CONFIG"]

ENV_CONFIG = "SLMFLOW_CONFIG"
_KEYS = {"home", "call_log", "vectors", "tracing", "ray", "llama_threads", "prices"}


@dataclass
class ScaleConfig:
    home: str | None = None
    call_log: str | None = None
    vectors: str | None = None
    tracing: dict[str, Any] = field(default_factory=dict)
    ray: str | None = None
    llama_threads: int | None = None
    prices: str | None = None
    source: str | None = None

    def env(self) -> dict[str, str]:
        """The environment variables this configuration stands for."""
        e: dict[str, str] = {}
        if self.home:
            e["SLMFLOW_HOME"] = self.home
        if self.call_log:
            e["SLMFLOW_CALLS_URL"] = self.call_log
        if self.vectors:
            e["SLMFLOW_VECTOR_STORE"] = self.vectors
        t = self.tracing
        if t.get("enabled") is False:
            e["SLMFLOW_TRACING"] = "off"
        if t.get("otlp_endpoint"):
            e["OTEL_EXPORTER_OTLP_ENDPOINT"] = str(t["otlp_endpoint"])
            e["OTEL_EXPORTER_OTLP_PROTOCOL"] = str(t.get("protocol") or "http")
        if t.get("capture_content"):
            e["SLMFLOW_TRACING_CAPTURE_CONTENT"] = "1"
        if self.ray:
            e["SLMFLOW_RAY_ADDRESS"] = self.ray
        if self.llama_threads:
            e["SLMFLOW_LLAMA_THREADS"] = str(int(self.llama_threads))
        if self.prices:
            e["SLMFLOW_PRICES"] = self.prices
        return e

    def open_call_log(self) -> Any:
        from ..store import open_call_log

        return open_call_log(self.call_log)

    def vector_store(self) -> Any:
        """The configured vector store (a `ChromaStore` for ``chroma://``), or None (embedded)."""
        if not self.vectors:
            return None
        from ..retrieval.stores import resolve_store

        return resolve_store(self.vectors)

    def check(self) -> dict[str, str]:
        """Open what the file names and say what answered (a call-log round trip, a Chroma
        heartbeat); raises the store's own error when one does not."""
        out: dict[str, str] = {}
        log = self.open_call_log()
        try:
            out["call_log"] = f"{type(log).__name__} schema v{log.schema_version()}"
        finally:
            log.close()
        store = self.vector_store()
        if store is not None and getattr(store, "url", None):
            import httpx

            from ..retrieval.errors import StoreUnavailableError

            try:
                r = httpx.get(f"{store.url}/api/v2/heartbeat", timeout=5)
                r.raise_for_status()
            except httpx.HTTPError as e:
                raise StoreUnavailableError(f"Chroma server unreachable: {e}",
                                            where=store.url) from None
            out["vectors"] = f"Chroma server {store.url} (heartbeat ok)"
        return out


def load_config(path: str | Path) -> ScaleConfig:
    """Read a deployment configuration file (YAML); paths in ``home`` are relative to it."""
    import yaml

    p = Path(path).expanduser()
    if not p.is_file():
        raise ConfigError("configuration file not found", where=str(p))
    data = yaml.safe_load(p.read_text()) or {}
    if not isinstance(data, dict):
        raise ConfigError("a configuration file is a mapping (home, call_log, vectors, "
                          "tracing, ray)", where=str(p))
    unknown = set(data) - _KEYS
    if unknown:
        raise ConfigError(f"unknown keys {sorted(unknown)}; known: {sorted(_KEYS)}",
                          where=str(p))
    tracing = data.get("tracing") or {}
    if isinstance(tracing, str):
        tracing = {"otlp_endpoint": tracing}
    if not isinstance(tracing, dict):
        raise ConfigError("tracing: a mapping (otlp_endpoint, protocol, enabled)", where=str(p))
    call_log = data.get("call_log")
    if call_log and not str(call_log).startswith(("sqlite:///", "postgresql://", "postgres://",
                                                  "postgresql+psycopg://")):
        raise ConfigError(f"call_log: sqlite:///path or postgresql://..., got {call_log!r}",
                          where=str(p))
    vectors = data.get("vectors")
    if vectors and not str(vectors).startswith(("chroma://", "embedded")):
        raise ConfigError(f"vectors: chroma://host:port[/collection] or embedded, got "
                          f"{vectors!r}", where=str(p))
    home = data.get("home")
    if home:
        home = str((p.parent / Path(str(home)).expanduser()).resolve())
    return ScaleConfig(home=home, call_log=call_log, vectors=vectors, tracing=tracing,
                       ray=str(data["ray"]) if data.get("ray") else None,
                       llama_threads=data.get("llama_threads"), prices=data.get("prices"),
                       source=str(p))


def apply_config(path: str | Path | None = None, *, override: bool = False) -> ScaleConfig | None:
    """Load ``path`` (default ``$SLMFLOW_CONFIG``) and set its environment variables in this
    process; variables already set win unless ``override``. Returns the configuration (None when
    there is no file to apply)."""
    path = path or os.environ.get(ENV_CONFIG)
    if not path:
        return None
    cfg = load_config(path)
    for k, v in cfg.env().items():
        if override or not os.environ.get(k):
            os.environ[k] = v
    setup = sys.modules.get("slmflow.tracing.setup")
    if setup is not None and (cfg.home or cfg.tracing):
        setup.shutdown()  # tracing re-reads its environment at the next span
    return cfg
