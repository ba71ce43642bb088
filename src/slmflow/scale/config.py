"""One configuration file that moves slmflow's state from one machine to shared servers.

Why environment variables underneath: every store already reads its location from one place at
the moment it opens (the call log ``$SLMFLOW_CALLS_URL``, the adapter registry
``$SLMFLOW_ADAPTERS_URL``, the span store ``$SLMFLOW_TRACES_URL``, OTLP export
``OTEL_EXPORTER_OTLP_ENDPOINT``, everything else ``$SLMFLOW_HOME``), in every process: the CLI,
the gateway, Ray workers (which inherit ``SLMFLOW_*``/``OTEL_*`` from the driver, see
`slmflow.scale.distributed`). So the file is a readable, versioned front for those variables;
`apply_config` sets them (explicit environment variables win over the file), and
``SLMFLOW_CONFIG=/etc/slmflow/deploy.yaml`` is the one thing to set on every machine. Nothing is
opened or connected here; `check` does that on demand.

    # deploy.yaml
    database: postgresql://slm@db:5432/slmflow  # call log + review queue, adapters, traces
    vectors: chroma://chroma:8000/support       # vector store for indexes (Chroma server)
    home: /srv/slmflow                          # local caches: models/, adapter copies, indexes/
    tracing:
      otlp_endpoint: http://collector:4318      # also export spans over OTLP (optional)
      protocol: http
      capture_content: false
    ray: 10.0.0.5:6379                          # default for --ray env (SLMFLOW_RAY_ADDRESS)
    llama_threads: 1                            # SLMFLOW_LLAMA_THREADS

``database`` is the one switch; ``call_log``, ``adapters`` and ``traces`` override it per store
(e.g. ``traces: sqlite:///...`` to keep spans local while the rest moves). What stays on each
machine: ``home`` holds caches (dequantized models, copies of the adapter versions it serves) and
an index's chunk text and metadata (its SQLite file under ``home/indexes``; only its vectors live
on the Chroma server).
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ConfigError, mask_url
from ..storage.urls import PG_SCHEMES

__all__ = ["ScaleConfig", "load_config", "apply_config", "ENV_CONFIG"]

ENV_CONFIG = "SLMFLOW_CONFIG"
_KEYS = {"home", "database", "call_log", "adapters", "traces", "vectors", "tracing", "ray",
         "llama_threads", "prices"}


@dataclass
class ScaleConfig:
    home: str | None = None
    call_log: str | None = None
    adapters: str | None = None
    traces: str | None = None
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
        if self.adapters:
            e["SLMFLOW_ADAPTERS_URL"] = self.adapters
        if self.traces:
            e["SLMFLOW_TRACES_URL"] = self.traces
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

    @property
    def traces_safe(self) -> str:
        return mask_url(self.traces or "")

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
        from ..finetune.registry_store import open_registry_store

        reg = open_registry_store(self.adapters)
        try:
            out["adapters"] = (f"{type(reg).__name__} {reg.location} "
                               f"({len(reg.agents())} agents)")
        finally:
            reg.close()
        if self.traces:
            from ..tracing.store import open_span_store

            spans = open_span_store(self.traces)
            out["traces"] = f"{type(spans).__name__} {self.traces_safe} ({spans.count()} spans)"
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
    """Read a deployment configuration file (YAML); relative paths (``home``, an ``adapters``
    folder) are relative to it. Errors name the file, the line and the key."""
    import yaml

    p = Path(path).expanduser()
    if not p.is_file():
        raise ConfigError("configuration file not found", where=str(p))
    text = p.read_text()
    try:
        data = yaml.safe_load(text) or {}
        node = yaml.compose(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        raise ConfigError(f"not valid YAML: {getattr(e, 'problem', None) or e}",
                          where=f"{p}:{mark.line + 1}" if mark else str(p)) from None
    if not isinstance(data, dict):
        raise ConfigError("a configuration file is a mapping (database, call_log, adapters, "
                          "traces, vectors, home, tracing, ray)", where=str(p))
    lines = {k.value: k.start_mark.line + 1 for k, _ in node.value} \
        if isinstance(node, yaml.MappingNode) else {}

    def bad(key: str, msg: str) -> ConfigError:
        return ConfigError(f"{key}: {msg}", where=f"{p}:{lines.get(key, 1)}")

    unknown = sorted(set(data) - _KEYS)
    if unknown:
        raise bad(unknown[0], f"unknown key; known: {sorted(_KEYS)}")
    tracing = data.get("tracing") or {}
    if isinstance(tracing, str):
        tracing = {"otlp_endpoint": tracing}
    if not isinstance(tracing, dict):
        raise bad("tracing", "a mapping (otlp_endpoint, protocol, enabled, capture_content)")
    database = data.get("database")
    if database and not str(database).startswith(PG_SCHEMES):
        raise bad("database", f"postgresql://user@host:port/db, got {database!r}")

    def url(key: str, ok: tuple[str, ...], want: str) -> str | None:
        v = data.get(key)
        if v and not str(v).startswith(ok):
            raise bad(key, f"{want}, got {v!r}")
        return str(v) if v else database

    sql_urls = ("sqlite:///",) + PG_SCHEMES
    call_log = url("call_log", sql_urls, "sqlite:///path or postgresql://...")
    traces = url("traces", sql_urls, "sqlite:///path or postgresql://...")
    adapters = data.get("adapters")
    if adapters and "://" in str(adapters):
        adapters = url("adapters", PG_SCHEMES + ("file://",), "a folder or postgresql://...")
    elif adapters:
        adapters = str((p.parent / Path(str(adapters)).expanduser()).resolve())
    else:
        adapters = database
    vectors = data.get("vectors")
    if vectors and not str(vectors).startswith(("chroma://", "embedded")):
        raise bad("vectors", f"chroma://host:port[/collection] or embedded, got {vectors!r}")
    threads = data.get("llama_threads")
    if threads is not None and (not isinstance(threads, int) or threads < 1):
        raise bad("llama_threads", f"a whole number of threads >= 1, got {threads!r}")
    home = data.get("home")
    if home:
        home = str((p.parent / Path(str(home)).expanduser()).resolve())
    return ScaleConfig(home=home, call_log=call_log, adapters=adapters, traces=traces,
                       vectors=vectors, tracing=tracing,
                       ray=str(data["ray"]) if data.get("ray") else None,
                       llama_threads=threads, prices=data.get("prices"), source=str(p))


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
