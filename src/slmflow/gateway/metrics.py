"""Prometheus metrics in the text exposition format (0.0.4), with no client library: counters,
gauges and one latency histogram, all labelled, thread-safe."""

from __future__ import annotations

import threading
from typing import Callable

__all__ = ["Metrics"]

_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


def _esc(v: object) -> str:
    return str(v).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(labels: tuple[tuple[str, str], ...], extra: str = "") -> str:
    parts = [f'{k}="{_esc(v)}"' for k, v in labels]
    if extra:
        parts.append(extra)
    return "{" + ",".join(parts) + "}" if parts else ""


class Metrics:
    def __init__(self, prefix: str = "slmflow_gateway") -> None:
        self.prefix = prefix
        self._lock = threading.Lock()
        self._counters: dict[str, dict[tuple, float]] = {}
        self._help: dict[str, tuple[str, str]] = {}
        self._hist: dict[tuple, list[float]] = {}
        self._gauges: dict[str, Callable[[], dict[tuple, float]]] = {}

    def inc(self, name: str, value: float = 1.0, help: str = "", **labels: object) -> None:
        key = tuple(sorted((k, str(v)) for k, v in labels.items()))
        with self._lock:
            self._help.setdefault(name, ("counter", help))
            d = self._counters.setdefault(name, {})
            d[key] = d.get(key, 0.0) + value

    def observe(self, seconds: float, **labels: object) -> None:
        key = tuple(sorted((k, str(v)) for k, v in labels.items()))
        with self._lock:
            h = self._hist.get(key)
            if h is None:
                h = self._hist[key] = [0.0] * (len(_BUCKETS) + 2)  # buckets..., sum, count
            for i, b in enumerate(_BUCKETS):
                if seconds <= b:
                    h[i] += 1
            h[-2] += seconds
            h[-1] += 1

    def gauge(self, name: str, fn: Callable[[], dict[tuple, float]], help: str = "") -> None:
        self._help[name] = ("gauge", help)
        self._gauges[name] = fn

    def render(self) -> str:
        p = self.prefix
        out: list[str] = []
        with self._lock:
            for name, series in sorted(self._counters.items()):
                kind, help = self._help.get(name, ("counter", ""))
                out.append(f"# HELP {p}_{name}_total {help or name}")
                out.append(f"# TYPE {p}_{name}_total counter")
                for labels, v in sorted(series.items()):
                    out.append(f"{p}_{name}_total{_labels(labels)} {v:g}")
            if self._hist:
                n = f"{p}_request_duration_seconds"
                out.append(f"# HELP {n} Time from request to the complete answer.")
                out.append(f"# TYPE {n} histogram")
                for labels, h in sorted(self._hist.items()):
                    for i, b in enumerate(_BUCKETS):
                        le = _labels(labels, 'le="%g"' % b)
                        out.append(f"{n}_bucket{le} {h[i]:g}")
                    le = _labels(labels, 'le="+Inf"')
                    out.append(f"{n}_bucket{le} {h[-1]:g}")
                    out.append(f"{n}_sum{_labels(labels)} {h[-2]:.6f}")
                    out.append(f"{n}_count{_labels(labels)} {h[-1]:g}")
        for name, fn in sorted(self._gauges.items()):
            _, help = self._help.get(name, ("gauge", ""))
            out.append(f"# HELP {p}_{name} {help or name}")
            out.append(f"# TYPE {p}_{name} gauge")
            try:
                series = fn()
            except Exception:
                series = {}
            for labels, v in sorted(series.items()):
                out.append(f"{p}_{name}{_labels(labels)} {v:g}")
        return "\n".join(out) + "\n"
