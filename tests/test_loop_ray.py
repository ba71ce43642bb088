"""The flagging job as Ray tasks: a real local cluster (`ray start --head` on loopback, 2 CPUs, its
own temp dir, stopped by process id) selects the window's time slices; the driver merges them.
On a SQLite file and on the real PostgreSQL server, the review items (call ids, reasons,
priorities, pre-filled corrections, budget cut) and the report counts must be those of the
single-process run over a fresh copy of the same log. The synthetic log is built so that the
merge matters: feedback in one slice on calls of another, two corrections on one call in two
slices, run-level feedback of two kinds in two slices, ties at the budget cut."""

from __future__ import annotations

import importlib.util
import json
import random
import time
from datetime import datetime, timezone

import pytest

from slmflow.errors import ConfigError
from slmflow.loop import FlagRules, flag_calls
from slmflow.loop.flag import select_candidates, time_slices
from slmflow.store import open_call_log
from slmflow.store.calllog import CallRecord, Feedback
from slmflow.store.review import ReviewQueue

from .conftest import reset_pg

if importlib.util.find_spec("ray") is None:  # not imported here: see slmflow.scale.connect
    pytest.skip("Ray is not installed (pip install slmflow[scale])", allow_module_level=True)

T0 = 1_700_000_000.0   # the window: [T0, T0 + SPAN)
SPAN = 1000.0
RULES = FlagRules(confidence_below=0.5, budget_per_agent=25)
AGENTS = ("router", "extractor", "writer", "checker")


def _id(prefix: str, i: int) -> str:
    return f"{prefix}{i:05d}"


def fill(log, n: int = 400) -> None:
    """`n` agent calls over the window (and a few before it), with feedback across it."""
    rng = random.Random(7)
    recs: list = []
    for i in range(n):
        esc = i % 13 == 0
        recs.append(CallRecord(
            kind="agent", agent=AGENTS[i % 7 % 4], input={"text": f"t{i}"}, output={"x": i},
            confidence=round(rng.betavariate(4, 1.5), 3) if i % 17 else None, escalated=esc,
            meta={"disagreed": i % 2 == 0} if esc else None,
            status="error" if i % 29 == 0 else "ok",
            run_id=f"run{i // 4:04d}", ts=T0 + SPAN * i / n, id=_id("c", i)))
    # calls before the window: only feedback given inside it can flag them
    recs += [CallRecord(kind="agent", agent="router", input="old", output="o", confidence=0.9,
                        ts=T0 - 500 + i, id=_id("old", i)) for i in range(5)]
    recs.append(CallRecord(kind="model", model="m", input="raw", output="o", confidence=0.1,
                           ts=T0 + 10, id="model-call"))

    def fb(k: int, call: str | None = None, run: str | None = None, at: float = 0.0,
           **kw) -> None:
        recs.append(Feedback(call_id=call, run_id=run, ts=T0 + at, id=_id("f", k), **kw))

    k = 0
    for i in range(0, n // 2, 5):  # early calls, thumbs-down late in the window
        fb(k, _id("c", i), at=SPAN * 0.9 - i * 0.1, signal="down", by="user")
        k += 1
    for i in range(3, n // 2, 11):  # early calls, two corrections in two slices: the latest wins
        fb(k, _id("c", i), at=SPAN * 0.3, correction={"x": f"early {i}"}, by="bob")
        fb(k + 1, _id("c", i), at=SPAN * 0.8, correction={"x": f"late {i}"}, by="carol")
        k += 2
    for i in range(n // 2 + 1, n, 9):  # late calls: verifier, handoff, online eval
        by = ("verifier:schema", "handoff:next", "eval:toxicity")[i % 3]
        fb(k, _id("c", i), at=SPAN * 0.95, signal="down", by=by)
        k += 1
    for r in range(0, n // 8, 6):  # runs of early calls: two kinds of run-level feedback
        fb(k, run=f"run{r:04d}", at=SPAN * 0.6, signal="down", by="user")
        fb(k + 1, run=f"run{r:04d}", at=SPAN * 0.99, signal="down", by="eval:judge")
        k += 2
    for i in range(5):
        fb(k, _id("old", i), at=SPAN * 0.7, correction="right", by="dana")
        k += 1
    fb(k, "model-call", at=SPAN * 0.5, signal="down", by="user")  # not an agent call
    fb(k + 1, _id("c", 1), at=SPAN * 0.5, signal="up", by="user")  # thumbs up: no reason
    log.append(recs)


def items(log) -> list[tuple]:
    return sorted((i.call_id, i.agent, tuple(i.reasons), i.priority, json.dumps(i.correction))
                  for i in ReviewQueue(log).items(status=None, limit=None))


def counts(rep) -> dict:
    return {k: getattr(rep, k) for k in ("scanned", "candidates", "already_queued", "flagged",
                                          "over_budget", "by_reason", "total")}


def _flag(log, **kw):
    return flag_calls(log, since=T0, until=T0 + SPAN, rules=RULES, **kw)


def test_the_data_needs_the_merge(tmp_path):
    """Guard: without merging across slices the runs would differ, so the comparisons below can
    fail. Per slice, the same calls come back with different reasons and corrections."""
    with open_call_log(f"sqlite:///{tmp_path / 'calls.db'}") as log:
        fill(log)
        parts = [select_candidates(log, lo, hi, RULES)[1]
                 for lo, hi in time_slices(log, T0, T0 + SPAN, 2)]
        whole = {c.id: c for c in select_candidates(log, T0, T0 + SPAN, RULES)[1]}
    a, b = ({c.id: c for c in p} for p in parts)
    both = set(a) & set(b)
    assert len(both) >= 20  # feedback in the second half on calls of the first
    assert any(a[i].reasons != b[i].reasons for i in both)
    assert any(a[i].correction != b[i].correction for i in both if a[i].correction)
    assert any({"negative_feedback", "failed_eval"} <= set(b[i].reasons) and
               "negative_feedback" not in a[i].reasons for i in both)
    assert whole[_id("c", 3)].correction == {"x": "late 3"}  # the latest correction
    assert any(c.startswith("old") for c in b) and "model-call" not in whole


def test_slices_in_this_process_equal_the_whole_window(tmp_path):
    out = {}
    for label, kw in (("whole", {}), ("sliced", {"slices": 7})):
        with open_call_log(f"sqlite:///{tmp_path / label}.db") as log:
            fill(log)
            rep = _flag(log, **kw)
            out[label] = (items(log), counts(rep), rep.slices)
    assert out["sliced"][:2] == out["whole"][:2]
    assert (out["whole"][2], out["sliced"][2]) == (1, 7)
    rep = out["whole"][1]
    assert rep["over_budget"] and rep["total"] == 25 * len(rep["flagged"])  # the budget cuts


def test_open_window_and_ray_env_unset_run_here(tmp_path, monkeypatch):
    """No start (-inf): the cuts start at the oldest row; `env` with no address: this process."""
    monkeypatch.delenv("SLMFLOW_RAY_ADDRESS", raising=False)
    out = {}
    for label, kw in (("whole", {}), ("sliced", {"slices": 3, "ray": "env"})):
        with open_call_log(f"sqlite:///{tmp_path / label}.db") as log:
            fill(log)
            windows = time_slices(log, float("-inf"), T0 + SPAN, 3)
            rep = flag_calls(log, since=None, until=T0 + SPAN, rules=RULES, **kw)
            out[label] = (items(log), counts(rep), rep.ray)
    assert windows[0][0] == float("-inf") and windows[1][0] == T0 - 500 + (SPAN + 500) / 3
    assert out["sliced"] == out["whole"] and out["whole"][1]["scanned"] == 405


def _compare(cluster, open_fresh) -> None:
    log = open_fresh()
    fill(log)
    single = _flag(log)
    want = items(log)
    log.close()
    log = open_fresh()
    fill(log)
    t0 = time.perf_counter()
    rep = _flag(log, ray=cluster.address, slices=4)
    ray_s = time.perf_counter() - t0
    try:
        assert rep.ray and rep.ray["address"] == cluster.address and rep.slices == 4
        assert rep.ray["batches"] == 4 and rep.ray["cluster_cpus"] == 2.0
        assert items(log) == want
        assert counts(rep) == counts(single)
        assert single.over_budget and set(single.flagged) == set(AGENTS)
        assert any(len(i[2]) > 1 for i in want) and any(i[4] != "null" for i in want)
        again = _flag(log, ray=cluster.address)  # default slices: one per cluster CPU
        assert again.slices == 2 and again.total == 0 and again.already_queued == single.total
        assert items(log) == want
        runs = log._all("SELECT flagged, config FROM flag_runs ORDER BY seq", ())
        assert [r[0] for r in runs] == [single.total, 0]
        assert json.loads(runs[0][1])["slices"] == 4
    finally:
        log.close()
    print(f"flag on Ray: {ray_s:.2f} s")


def test_flag_on_ray_equals_single_process_sqlite(cluster, tmp_path):
    n = iter(range(10))
    _compare(cluster, lambda: open_call_log(f"sqlite:///{tmp_path / f'calls{next(n)}.db'}"))


def test_flag_on_ray_equals_single_process_postgresql(cluster, pg_url):
    def fresh():
        reset_pg(pg_url)
        return open_call_log(pg_url)

    _compare(cluster, fresh)


def test_cli_flag_with_ray_and_a_bad_address(cluster, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from slmflow.cli import app

    url = f"sqlite:///{tmp_path / 'calls.db'}"
    with open_call_log(url) as log:
        fill(log)
    iso = [datetime.fromtimestamp(t, timezone.utc).isoformat() for t in (T0, T0 + SPAN)]
    args = ["loop", "flag", "--since", iso[0], "--until", iso[1], "--budget", "25",
            "--calls", url]
    monkeypatch.setenv("SLMFLOW_RAY_ADDRESS", cluster.address)
    r = CliRunner().invoke(app, args + ["--ray", "env", "--slices", "3", "--dry-run"])
    assert r.exit_code == 0, r.output
    assert f"on Ray at {cluster.address}: 3 time slices" in r.output
    r = CliRunner().invoke(app, args + ["--ray", cluster.address, "--json"])
    assert r.exit_code == 0, r.output
    rep = json.loads(r.output)
    assert rep["slices"] == 2 and rep["ray"]["address"] == cluster.address
    assert rep["total"] == 100 and sum(rep["over_budget"].values()) > 0
    t0 = time.time()
    r = CliRunner().invoke(app, args + ["--ray", "127.0.0.1:1"])
    assert r.exit_code == 1 and time.time() - t0 < 30  # not ray.init's minutes of retries
    assert isinstance(r.exception, ConfigError)
    assert "cannot connect to the Ray cluster at 127.0.0.1:1" in str(r.exception)
