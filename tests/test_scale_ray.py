"""Batch work on Ray: a real local cluster (`ray start --head` on loopback, 2 CPUs, its own temp
dir) started by the module fixture and stopped by process id afterwards. The BANKING77 router on
the embedded SmolLM2 (greedy) must give the same rows and scores on Ray as in one process; batch
inference over a real call log must agree with the single-process run call for call."""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from pathlib import Path

import pytest

if importlib.util.find_spec("ray") is None:  # not imported here: see slmflow.scale.connect
    pytest.skip("Ray is not installed (pip install slmflow[scale])", allow_module_level=True)

ROOT = Path(__file__).resolve().parents[1]
BANKING = ROOT / "examples" / "banking77"


def square(x: int) -> int:
    if x == 13:
        raise ValueError("thirteen")
    return x * x


def pid_of(_: int) -> int:
    return os.getpid()


@pytest.fixture(scope="module")
def router():
    sys.path.insert(0, str(BANKING))
    import eval_router

    return eval_router


def _rows(rep):
    return [(r.id, r.status, r.output, {k: v.score for k, v in r.evals.items()})
            for r in rep.rows]


def test_ray_map_keeps_order_runs_on_workers_and_raises(cluster):
    from slmflow.scale import ray_map

    items = list(range(12))
    assert ray_map(square, items, address=cluster.address, batch_size=5) == \
        [x * x for x in items] == ray_map(square, items, batch_size=5)
    pids = ray_map(pid_of, list(range(8)), address=cluster.address, batch_size=2)
    assert os.getpid() not in pids  # ran in the cluster's worker processes
    with pytest.raises(Exception, match="thirteen"):
        ray_map(square, [1, 13, 2], address=cluster.address, batch_size=1)


@pytest.mark.slow
def test_eval_on_ray_equals_the_single_process_run(cluster, router):
    from slmflow.evals import run_suite
    from slmflow.scale import AgentRef, run_suite_ray

    cases = router.cases(limit=8)
    evs = router.evaluators()
    single = run_suite(router.agent, cases, evs)
    ref = AgentRef("eval_router:agent", base=str(BANKING))
    on_ray = run_suite_ray(ref, cases, evs, address=cluster.address, batch_size=2)
    assert _rows(on_ray) == _rows(single)
    assert {k: v for k, v in on_ray.scores.items()} == single.scores
    assert on_ray.meta["ray"]["batches"] == 4 and on_ray.meta["ray"]["cluster_cpus"] == 2.0


@pytest.mark.slow
def test_cli_eval_with_ray_gives_the_same_report(cluster, tmp_path):
    from typer.testing import CliRunner

    from slmflow.cli import app

    suite = str(BANKING / "router_suite.yaml")
    out = {}
    for label, extra in (("single", []), ("ray", ["--ray", cluster.address])):
        p = tmp_path / f"{label}.json"
        r = CliRunner().invoke(app, ["eval", "agent", suite, "--limit", "6", "--no-progress",
                                     "--json", str(p)] + extra)
        assert r.exit_code == 0, r.output
        out[label] = json.loads(p.read_text())
    assert out["ray"]["scores"] == out["single"]["scores"]
    assert [(r["id"], r["output"]) for r in out["ray"]["rows"]] == \
        [(r["id"], r["output"]) for r in out["single"]["rows"]]
    assert out["ray"]["meta"]["ray"]["address"] == cluster.address


@pytest.mark.slow
def test_batch_infer_over_the_call_log(cluster, router, tmp_path):
    from slmflow.scale import AgentRef, batch_infer
    from slmflow.store import CallRecord, open_call_log

    texts = [c.input for c in router.cases(limit=6).cases]
    truth = [router.agent.run_sync(t).output.model_dump() for t in texts]
    other = [{"intent": "top_up_failed" if o["intent"] == "card_arrival" else "card_arrival"}
             for o in truth]
    logged = [o if i % 2 == 0 else other[i] for i, o in enumerate(truth)]  # 3 of 6 differ
    url = f"sqlite:///{tmp_path / 'calls.db'}"
    with open_call_log(url) as log:
        log.append([CallRecord(kind="agent", agent="banking77-router", input=t, output=o,
                               model="smollm2-135m") for t, o in zip(texts, logged)])
        log.append([CallRecord(kind="agent", agent="someone-else", input="x", output="y")])
    ref = AgentRef("eval_router:agent", base=str(BANKING))
    local = batch_infer(ref, url)
    remote = batch_infer(ref, url, address=cluster.address, batch_size=2,
                         out=tmp_path / "out.jsonl")
    assert local["calls"] == remote["calls"] == 6
    assert [r["output"] for r in local["rows"]] == truth
    rows = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [r["output"] for r in rows] == truth
    assert [r["same"] for r in rows] == [o == t for o, t in zip(logged, truth)]
    assert remote["changed"] == sum(o != t for o, t in zip(logged, truth)) == 3
    assert remote["last_seq"] == rows[-1]["seq"]
    with open_call_log(url) as log:  # re-runs stay out of the call log
        assert log.count() == 7
