"""Provider set-up: where spans go (the span store, OTLP), and how failures are counted.

Why a private `TracerProvider` and not the global one: OpenTelemetry lets the global provider be
set once per process, but slmflow must be re-configurable (tests, notebooks, a CLI that switches
the exporter) and must not fight an application that already set its own global provider. Spans
still share OpenTelemetry's global *context*, so a user's own spans and slmflow's nest in one
tree either way. ``configure(set_global=True)`` also installs the provider globally.

Why lazy: ``import slmflow`` must stay cheap and must not open files. The first span configures
tracing from the environment: the span store named by ``$SLMFLOW_TRACES_URL`` (a
``postgresql://`` URL when several machines or processes share one trace store, see
`slmflow.tracing.store`), else the local SQLite file ``$SLMFLOW_HOME/spans.db``; nothing when
``SLMFLOW_TRACING=off``; plus OTLP when ``OTEL_EXPORTER_OTLP_ENDPOINT`` is set. psycopg is
imported only when the URL is a PostgreSQL one.

Why the guards: tracing must never break a run. Every exporter is wrapped so an exception or a
failed export (collector down, disk full) becomes a counted drop, logged once with the count on
the ``slmflow.tracing`` logger (then at most once a minute, and a summary at shutdown); spans the
batch queue had to discard are counted the same way. `health()` returns the counters.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import (BatchSpanProcessor, SimpleSpanProcessor, SpanExporter,
                                            SpanExportResult)

log = logging.getLogger("slmflow.tracing")

_OFF = ("off", "0", "false", "no", "none", "disabled")
_WARN_EVERY_S = 60.0


@dataclass
class TracingConfig:
    """What `configure` settled on (returned by it, and by `config()`)."""

    enabled: bool = True
    store: bool = True
    db_path: str | None = None
    store_url: str | None = None  # sqlite:///path or postgresql://... (what the store writes to)
    otlp_endpoint: str | None = None
    protocol: str = "http"
    capture_content: bool = False
    retention_days: float | None = 14.0
    max_spans: int | None = None
    service_name: str = "slmflow"
    exporters: list[str] = field(default_factory=list)


class Health:
    """Counters of what happened to finished spans, per exporter. Thread-safe enough: ints under
    one lock, touched only on the export thread and on drops (never on the hot path)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.exported: dict[str, int] = {}
        self.dropped: dict[str, int] = {}
        self.last_error: dict[str, str] = {}
        self._warned_at: dict[str, float] = {}

    def ok(self, name: str, n: int) -> None:
        with self.lock:
            self.exported[name] = self.exported.get(name, 0) + n

    def drop(self, name: str, n: int, why: str) -> None:
        with self.lock:
            total = self.dropped[name] = self.dropped.get(name, 0) + n
            self.last_error[name] = why
            now = time.monotonic()
            last = self._warned_at.get(name)
            warn = last is None or now - last >= _WARN_EVERY_S
            if warn:
                self._warned_at[name] = now
        if warn:
            log.warning("slmflow tracing: %d span(s) dropped so far by exporter %r (%s); "
                        "the run itself is unaffected", total, name, why)

    def snapshot(self) -> dict[str, Any]:
        with self.lock:
            return {"exported": dict(self.exported), "dropped": dict(self.dropped),
                    "dropped_total": sum(self.dropped.values()),
                    "last_error": dict(self.last_error)}

    def summary(self) -> None:
        s = self.snapshot()
        if s["dropped_total"]:
            log.warning("slmflow tracing: %d span(s) were dropped in all: %s", s["dropped_total"],
                        ", ".join(f"{k}={v} ({s['last_error'].get(k, '')})"
                                  for k, v in s["dropped"].items()))


class GuardedExporter(SpanExporter):
    """Wraps an exporter so that it never raises and every span it fails to deliver is counted."""

    def __init__(self, inner: SpanExporter, name: str, health: Health) -> None:
        self.inner, self.name, self.health = inner, name, health

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        try:
            result = self.inner.export(spans)
        except Exception as e:  # tracing must never break a run
            self.health.drop(self.name, len(spans), f"{type(e).__name__}: {e}")
            return SpanExportResult.FAILURE
        if result is SpanExportResult.SUCCESS:
            self.health.ok(self.name, len(spans))
        else:
            self.health.drop(self.name, len(spans), "export failed")
        return result

    def shutdown(self) -> None:
        try:
            self.inner.shutdown()
        except Exception:
            pass

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        try:
            return self.inner.force_flush(timeout_millis)
        except Exception:
            return False


class _QueueDropMetrics:
    """Stands in for the batch processor's metrics object, to count spans its full queue drops.
    (The SDK only logs those, and its duplicate filter hides repeats.)"""

    def __init__(self, inner: Any, name: str, health: Health) -> None:
        self.inner, self.name, self.health = inner, name, health

    def register_queue_size(self, get_queue_size: Any) -> None:
        self.inner.register_queue_size(get_queue_size)

    def drop_items(self, count: int, error_type: str = "queue_full") -> None:
        self.health.drop(self.name, count, f"batch queue: {error_type}")
        self.inner.drop_items(count, error_type)

    def finish_items(self, count: int) -> None:
        self.inner.finish_items(count)


class _State:
    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.provider: TracerProvider | None = None
        self.tracer: Any = None  # None: not configured yet
        self.enabled = False
        self.config = TracingConfig(enabled=False)
        self.health = Health()
        self.store_exporter: Any = None
        self.atexit = False


_state = _State()


def _env_off() -> bool:
    return os.environ.get("SLMFLOW_TRACING", "").strip().lower() in _OFF


def _env_float(name: str) -> float | None:
    v = os.environ.get(name)
    try:
        return float(v) if v not in (None, "") else None
    except ValueError:
        return None


def _env_capture() -> bool:
    for name in ("SLMFLOW_TRACING_CAPTURE_CONTENT",
                 "OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT"):
        if os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on"):
            return True
    return False


def default_db_path() -> Path:
    from ..home import home

    return home() / "spans.db"


def _otlp_exporter(endpoint: str, protocol: str, headers: dict[str, str] | None,
                   timeout_s: float) -> SpanExporter:
    from ..errors import ConfigError

    try:
        if protocol == "grpc":
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
            ep = endpoint.split("://", 1)[-1]
            return OTLPSpanExporter(endpoint=ep, insecure=not endpoint.startswith("https"),
                                    headers=headers, timeout=timeout_s)
        if protocol in ("http", "http/protobuf"):
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import \
                OTLPSpanExporter as HttpExporter
            url = endpoint if endpoint.rstrip("/").endswith("/v1/traces") else \
                endpoint.rstrip("/") + "/v1/traces"
            return HttpExporter(endpoint=url, headers=headers, timeout=timeout_s)
    except ImportError as e:
        raise ConfigError(f"OTLP export needs the exporter packages ({e.name}): "
                          "pip install 'slmflow[tracing]'", where="tracing.configure") from None
    raise ConfigError(f"protocol must be 'http' or 'grpc', got {protocol!r}",
                      where="tracing.configure")


def configure(*, enabled: bool = True, store: bool = True, db_path: str | Path | None = None,
              store_url: str | None = None,
              otlp_endpoint: str | None = None, protocol: str = "http",
              headers: dict[str, str] | None = None, capture_content: bool | None = None,
              retention_days: float | None = None, max_spans: int | None = None,
              service_name: str = "slmflow", exporters: Sequence[SpanExporter] = (),
              batch: bool = True, schedule_delay_ms: int = 1000, max_queue_size: int = 8192,
              export_timeout_s: float = 5.0, set_global: bool = False) -> TracingConfig:
    """(Re)configure where slmflow's spans go. Replaces any earlier configuration (its pending
    spans are flushed first).

    store: write spans to the span store: ``db_path`` (a SQLite file), else ``store_url``
        (``sqlite:///path`` or ``postgresql://...``), else ``$SLMFLOW_TRACES_URL``, else
        ``$SLMFLOW_HOME/spans.db``.
    otlp_endpoint, protocol ("http" or "grpc"), headers: also export OTLP to a collector.
    capture_content: record prompts and answers on spans (off by default: they may be private).
    retention_days / max_spans: prune the local store (default 14 days, env
        ``SLMFLOW_TRACE_RETENTION_DAYS``).
    exporters: extra `SpanExporter`s (each guarded and counted like the built-in ones).
    batch: False exports synchronously on span end (tests, short scripts); True uses a
        `BatchSpanProcessor` so export never runs on the caller's thread.
    """
    with _state.lock:
        _shutdown_locked()
        if retention_days is None:
            retention_days = _env_float("SLMFLOW_TRACE_RETENTION_DAYS") or 14.0
        cfg = TracingConfig(enabled=enabled, store=store and enabled,
                            otlp_endpoint=otlp_endpoint if enabled else None, protocol=protocol,
                            capture_content=_env_capture() if capture_content is None
                            else bool(capture_content),
                            retention_days=retention_days, max_spans=max_spans,
                            service_name=service_name)
        _state.config = cfg
        if not enabled:
            _state.enabled = False
            _state.tracer = trace.NoOpTracer()
            return cfg
        provider = TracerProvider(resource=Resource.create({"service.name": service_name}),
                                  shutdown_on_exit=False)
        named: list[tuple[str, SpanExporter]] = []
        if store:
            from .store import PostgresSpanExporter, span_exporter

            target: str | Path = (Path(db_path) if db_path else
                                  store_url or _env_store_url() or default_db_path())
            ex = span_exporter(target, retention_days=retention_days, max_spans=max_spans)
            if isinstance(ex, PostgresSpanExporter):
                cfg.store_url = ex.url
                named.append(("postgresql", ex))
            else:
                cfg.db_path = str(ex.path)
                cfg.store_url = f"sqlite:///{ex.path}"
                named.append(("sqlite", ex))
            _state.store_exporter = ex
        if otlp_endpoint:
            named.append((f"otlp-{protocol}",
                          _otlp_exporter(otlp_endpoint, protocol, headers, export_timeout_s)))
        for i, ex in enumerate(exporters):
            named.append((f"{type(ex).__name__}#{i}", ex))
        for name, ex in named:
            guarded = GuardedExporter(ex, name, _state.health)
            if batch:
                proc = BatchSpanProcessor(guarded, schedule_delay_millis=schedule_delay_ms,
                                          max_queue_size=max_queue_size,
                                          max_export_batch_size=min(512, max_queue_size),
                                          export_timeout_millis=export_timeout_s * 1000)
                bp = getattr(proc, "_batch_processor", None)
                if bp is not None and hasattr(bp, "_metrics"):
                    bp._metrics = _QueueDropMetrics(bp._metrics, name, _state.health)
            else:
                proc = SimpleSpanProcessor(guarded)
            provider.add_span_processor(proc)
            cfg.exporters.append(name)
        _state.provider = provider
        _state.tracer = provider.get_tracer("slmflow")
        _state.enabled = True
        if set_global:
            trace.set_tracer_provider(provider)
        if not _state.atexit:
            atexit.register(_at_exit)
            _state.atexit = True
        return cfg


def get_tracer() -> Any:
    """slmflow's tracer, configuring tracing from the environment on first use."""
    t = _state.tracer
    if t is not None:
        return t
    with _state.lock:
        if _state.tracer is None:
            if _env_off():
                configure(enabled=False)
            else:
                try:
                    configure(otlp_endpoint=os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or None,
                              protocol="grpc" if os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL",
                                                                "") == "grpc" else "http")
                except Exception as e:  # a broken environment must not break the run
                    log.warning("slmflow tracing disabled: could not configure it (%s)", e)
                    configure(enabled=False)
        return _state.tracer


def is_enabled() -> bool:
    get_tracer()
    return _state.enabled


def capture_content() -> bool:
    """Whether prompts, answers and tool arguments are recorded on spans (opt-in)."""
    return _state.config.capture_content


def config() -> TracingConfig:
    return _state.config


def health() -> dict[str, Any]:
    """Counters per exporter: spans exported, spans dropped (with the last reason)."""
    return _state.health.snapshot()


def db_path() -> Path:
    """The local SQLite store in use (or the default one, for readers in another process)."""
    p = _state.config.db_path
    return Path(p) if p else default_db_path()


def _env_store_url() -> str | None:
    return os.environ.get("SLMFLOW_TRACES_URL", "").strip() or None


def store_url() -> str:
    """The span store this process writes to (``sqlite:///path`` or ``postgresql://...``); when
    it writes to none: ``$SLMFLOW_TRACES_URL``, else ``sqlite:///$SLMFLOW_HOME/spans.db``. What
    every reader (CLI, UI, scenario evals) opens by default."""
    u = _state.config.store_url if _state.config.store else None
    return u or _env_store_url() or f"sqlite:///{default_db_path()}"


def force_flush(timeout_s: float = 30.0) -> bool:
    """Export every finished span now (the CLI and tests call this before reading the store)."""
    p = _state.provider
    if p is None:
        return True
    try:
        return p.force_flush(int(timeout_s * 1000))
    except Exception:
        return False


def _shutdown_locked() -> None:
    p, _state.provider = _state.provider, None
    if p is not None:
        try:
            p.shutdown()
        except Exception:
            pass
        _state.health.summary()
    _state.store_exporter = None
    _state.tracer = None
    _state.enabled = False


def shutdown() -> None:
    """Flush and close every exporter; the next span re-configures from the environment."""
    with _state.lock:
        _shutdown_locked()


def reset() -> None:
    """`shutdown`, and forget the counters (tests)."""
    with _state.lock:
        _shutdown_locked()
        _state.health = Health()
        _state.config = TracingConfig(enabled=False)


def _at_exit() -> None:
    try:
        shutdown()
    except Exception:
        pass
