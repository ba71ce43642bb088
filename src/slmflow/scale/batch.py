"""Evals and batch inference over many rows, in this process or as Ray tasks.

Why an `AgentRef` instead of shipping the `Agent`: an agent holds a loaded model (llama.cpp
contexts cannot be pickled) and often a pydantic output type defined in a user's module. A Ray
task gets the *recipe* (``module:attr`` / ``file.py:attr``, or a workflow file and an agent name,
plus the model override) and builds the agent once per worker process (`worker_cache`), so a
cluster loads each model once per worker, not once per row.

Why results are identical to the single-process run: each worker runs the very same
`run_suite` on a contiguous batch of cases; rows come back in input order and the scores are
aggregated once, on the driver, by the same function the single-process run uses. With greedy
decoding the outputs are the same row for row (the tests check it on a real Ray cluster).

Batch inference (`batch_infer`) re-runs an agent (say with a candidate adapter) on the inputs of
logged calls, read from the call log with ``iter_since``, and writes one JSON line per call with
the logged and the new output. Re-runs stay out of the call log (``logging_context``).
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import sys
import time
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Sequence

from ..errors import ConfigError
from .distributed import RayStats, ray_map, worker_cache

__all__ = ["AgentRef", "run_suite_ray", "batch_infer", "import_ref"]


def import_ref(ref: str, base: str | Path = ".") -> Any:
    """``module:attr`` or ``path/file.py:attr`` (relative to ``base``), as the CLI reads them."""
    mod, _, attr = ref.partition(":")
    if not attr:
        raise ConfigError(f"expected module:attribute or file.py:attribute, got {ref!r}",
                          where="agent ref")
    b = Path(base).resolve()
    if str(b) not in sys.path:
        sys.path.insert(0, str(b))
    try:
        if mod.endswith(".py"):
            p = Path(mod) if Path(mod).is_absolute() else b / mod
            if not p.is_file():
                raise ConfigError(f"file not found: {p}", where="agent ref")
            if str(p.parent) not in sys.path:
                sys.path.insert(0, str(p.parent))
            m = sys.modules.get(p.stem)
            if m is None or getattr(m, "__file__", None) != str(p):
                spec = importlib.util.spec_from_file_location(p.stem, p)
                m = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
                sys.modules[p.stem] = m
                spec.loader.exec_module(m)  # type: ignore[union-attr]
        else:
            m = importlib.import_module(mod)
    except ImportError as e:
        raise ConfigError(f"cannot import {mod!r}: {e}", where="agent ref") from None
    if not hasattr(m, attr):
        raise ConfigError(f"{mod!r} has no attribute {attr!r}", where="agent ref")
    return getattr(m, attr)


@dataclass(frozen=True)
class AgentRef:
    """How to build an agent anywhere: ``target`` is ``module:attr`` / ``file.py:attr`` of an
    Agent (or a function returning one), or an agent name with ``workflow``. ``model`` and
    ``adapter`` override the agent's; ``pool_size`` > 1 builds the model with that many
    llama.cpp contexts (concurrent cases)."""

    target: str
    workflow: str | None = None
    base: str = "."
    model: str | None = None
    adapter: str | None = None
    pool_size: int = 1

    def absolute(self) -> "AgentRef":
        """Paths made absolute (workers may start in another directory)."""
        return replace(self, base=str(Path(self.base).resolve()),
                       workflow=str(Path(self.workflow).resolve()) if self.workflow else None)

    def build(self) -> Any:
        from ..agents import Agent

        if self.workflow:
            from ..workflow import load_workflow

            agent = load_workflow(self.workflow).agent(self.target)
        else:
            agent = import_ref(self.target, self.base)
            if callable(agent) and not isinstance(agent, Agent):
                agent = agent()
        if not isinstance(agent, Agent):
            raise ConfigError(f"{self.target} is not an Agent (got {type(agent).__name__})",
                              where="agent ref")
        adapter = self.adapter if self.adapter is not None else agent.adapter
        m = self.model or (agent.model if isinstance(agent.model, str) else None)
        if m is not None and (self.model or self.pool_size > 1):
            from ..models.catalog import resolve

            kw = {"pool_size": self.pool_size} if self.pool_size > 1 and \
                not m.startswith("openai:") else {}
            try:
                model = resolve(m, **kw)
            except TypeError:  # a backend without context pools
                model = resolve(m)
            agent = agent.with_model(model, adapter)
        elif adapter != agent.adapter:
            agent = agent.with_adapter(adapter)
        return agent

    def cached(self) -> Any:
        return worker_cache(("agent", self), self.build)


# ---- evals ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class _EvalBatch:
    """The picklable function a Ray task runs: one `run_suite` over a batch of cases."""

    ref: AgentRef
    evaluators: tuple[Any, ...]
    concurrency: int
    name: str
    timeout_s: float | None

    def __call__(self, cases: list[Any]) -> list[Any]:
        from ..evals import run_suite

        rep = run_suite(self.ref.cached(), cases, list(self.evaluators),
                        concurrency=self.concurrency, name=self.name, timeout_s=self.timeout_s)
        by_id = {r.id: r for r in rep.rows}
        return [by_id[c.id] for c in cases]


def run_suite_ray(ref: AgentRef, cases: Any, evaluators: Sequence[Any], *,
                  address: str | None, concurrency: int = 1, name: str | None = None,
                  timeout_s: float | None = None, batch_size: int | None = None,
                  workers: int | None = None, stats: RayStats | None = None) -> Any:
    """`slmflow.evals.run_suite` with the cases spread over Ray tasks (``address=None``: the same
    batches in this process). Returns the same `SuiteReport` (rows in input order, scores from the
    same aggregation); ``report.meta["ray"]`` says how it ran."""
    from ..evals import create
    from ..evals.suite import RowResult, SuiteReport, aggregate_rows, as_caseset

    cs = as_caseset(cases)
    evs = [create(e) for e in evaluators]
    ref = ref.absolute()
    if concurrency > 1 and ref.pool_size < concurrency:
        ref = replace(ref, pool_size=concurrency)
    suite = name or ref.target.rsplit(":", 1)[-1]
    st = stats if stats is not None else RayStats(address)
    n = len(cs.cases)
    if batch_size is None:  # a few batches per worker: balance without much task overhead
        batch_size = max(1, min(32, -(-n // 8))) if n else 1
    started = datetime.now(timezone.utc).isoformat(timespec="seconds")
    t0 = time.perf_counter()
    fn = _EvalBatch(ref, tuple(evs), concurrency, suite, timeout_s)
    rows: list[RowResult] = [RowResult(e.id, "errored", error=e.reason, error_stage="data")
                             for e in cs.errors]
    rows += ray_map(fn, list(cs.cases),
                    address=address, batch_size=batch_size, workers=workers, batched=True,
                    stats=st)
    duration = time.perf_counter() - t0
    scores, details = aggregate_rows(rows, cs.cases, evs)
    return SuiteReport(suite, ref.target, rows, scores, details, [e.name for e in evs], duration,
                       concurrency, started, meta={"source": cs.source,
                                                   "data_errors": len(cs.errors),
                                                   "ray": st.to_dict()})


# ---- batch inference over the call log -----------------------------------------------------------

def _plain(v: Any) -> Any:
    if hasattr(v, "model_dump"):
        return v.model_dump(mode="json")
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    return v


@dataclass(frozen=True)
class _InferBatch:
    ref: AgentRef

    def __call__(self, inputs: list[Any]) -> list[dict[str, Any]]:
        from ..models.base import run_sync
        from ..hooks import logging_context

        agent = self.ref.cached()
        out = []
        for x in inputs:
            try:
                with logging_context(enabled=False):
                    r = run_sync(agent.run(x))
                out.append({"output": _plain(r.output), "model": r.model_identity,
                            "confidence": r.confidence, "error": None})
            except Exception as e:  # noqa: BLE001 - one bad row must not stop the batch
                out.append({"output": None, "model": None, "confidence": None,
                            "error": f"{type(e).__name__}: {e}"[:500]})
        return out


def batch_infer(ref: AgentRef, calls: Any = None, *, source_agent: str | None = None,
                after_seq: int = 0, limit: int | None = None, address: str | None = None,
                batch_size: int = 16, workers: int | None = None,
                out: str | Path | None = None) -> dict[str, Any]:
    """Re-run an agent on the inputs of logged calls of ``source_agent`` (default: the agent's
    own name) after ``after_seq``. ``calls`` is a call-log URL, an open `CallLog`, or None (the
    default log). Writes JSON lines to ``out``; returns a summary (``last_seq`` resumes)."""
    from ..store import open_call_log

    log = calls if hasattr(calls, "iter_since") else open_call_log(calls)
    ref = ref.absolute()
    who = source_agent or ref.cached().name
    recs = []
    try:
        for rec in log.iter_since(after_seq):
            if rec.kind != "agent" or rec.agent != who or rec.input is None:
                continue
            recs.append(rec)
            if limit and len(recs) >= limit:
                break
    finally:
        if log is not calls:
            log.close()
    st = RayStats(address)
    t0 = time.perf_counter()
    results = ray_map(_InferBatch(ref), [r.input for r in recs], address=address,
                      batch_size=batch_size, workers=workers, batched=True, stats=st)
    rows = [{"call_id": r.id, "seq": r.seq, "input": r.input, "logged_output": r.output,
             "logged_model": r.model, **res, "same": res["error"] is None and
             _plain(res["output"]) == r.output} for r, res in zip(recs, results)]
    if out is not None:
        p = Path(out)
        p.parent.mkdir(parents=True, exist_ok=True)
        with open(p, "w") as f:
            for row in rows:
                f.write(json.dumps(row, default=str) + "\n")
    return {"agent": who, "calls": len(rows), "same": sum(r["same"] for r in rows),
            "changed": sum(not r["same"] and r["error"] is None for r in rows),
            "errors": sum(r["error"] is not None for r in rows),
            "last_seq": rows[-1]["seq"] if rows else after_seq,
            "wall_s": time.perf_counter() - t0, "out": str(out) if out else None,
            "ray": st.to_dict(), "rows": rows if out is None else None}
