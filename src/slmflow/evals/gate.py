"""The regression gate: compare a report's scores with a stored baseline.

Every score is higher-is-better. A metric *drops* when ``current < baseline - tolerance``; the gate
fails on any drop, and on a metric the baseline has but the report lacks (a silently missing
metric must not pass). ``metrics`` restricts the comparison (the adapter-promotion gate compares
``accuracy`` and ``macro_f1``, say); by default every metric of the baseline is compared.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from ..errors import ConfigError

__all__ = ["GateResult", "compare", "load_baseline"]


@dataclass
class GateResult:
    passed: bool
    tolerance: float
    compared: dict[str, tuple[float, float]] = field(default_factory=dict)  # name: (base, cur)
    drops: dict[str, tuple[float, float]] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        return self.passed

    @property
    def exit_code(self) -> int:
        return 0 if self.passed else 1

    def lines(self) -> list[str]:
        out = []
        for k, (b, c) in self.compared.items():
            mark = "DROP" if k in self.drops else "ok"
            out.append(f"{mark:4} {k}: {b:.4f} -> {c:.4f} ({c - b:+.4f})")
        out += [f"MISS {k}: in the baseline, not in this report" for k in self.missing]
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"passed": self.passed, "tolerance": self.tolerance,
                "compared": {k: {"baseline": b, "current": c} for k, (b, c) in
                             self.compared.items()},
                "drops": sorted(self.drops), "missing": self.missing}


def _scores(x: Any) -> dict[str, float]:
    if hasattr(x, "scores"):
        return dict(x.scores)
    if isinstance(x, (str, Path)):
        return load_baseline(x)
    if isinstance(x, Mapping):
        s = x.get("scores", x)
        return {k: float(v) for k, v in s.items()
                if isinstance(v, (int, float)) and not isinstance(v, bool)}
    raise ConfigError(f"cannot read scores from {type(x).__name__}", where="evals.gate")


def load_baseline(path: str | Path) -> dict[str, float]:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"baseline not found: {p}", where=str(p))
    try:
        doc = json.loads(p.read_text())
    except json.JSONDecodeError as e:
        raise ConfigError(f"baseline is not JSON: {e.msg}", where=str(p)) from None
    if not isinstance(doc, dict):
        raise ConfigError("a baseline is a report JSON or a {metric: value} object",
                          where=str(p))
    return _scores(doc)


def compare(report: Any, baseline: Any, tolerance: float = 0.02,
            metrics: Sequence[str] | None = None) -> GateResult:
    """Gate ``report`` (a `SuiteReport`, its dict, or a scores dict) against ``baseline`` (the same
    kinds, or a path to a saved report JSON)."""
    if tolerance < 0:
        raise ConfigError(f"tolerance must be >= 0, got {tolerance}", where="evals.gate")
    cur, base = _scores(report), _scores(baseline)
    names = list(metrics) if metrics else list(base)
    res = GateResult(True, tolerance)
    for k in names:
        if k not in base:
            raise ConfigError(f"metric {k!r} is not in the baseline (has: {sorted(base)})",
                              where="evals.gate")
        if k not in cur:
            res.missing.append(k)
            continue
        res.compared[k] = (base[k], cur[k])
        if cur[k] < base[k] - tolerance - 1e-12:
            res.drops[k] = (base[k], cur[k])
    res.passed = not res.drops and not res.missing
    return res
