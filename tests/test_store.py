"""The call-log store on both backends: embedded SQLite and a real PostgreSQL server that the
fixture creates (initdb) and starts on loopback. One test body runs against each."""

from __future__ import annotations

import threading
import time

import pytest

from slmflow import Agent, FunctionModel
from slmflow.errors import ConfigError
from slmflow.store import (CallLogging, CallLogWriter, CallRecord, Example, open_call_log,
                           record_agent_result)
from slmflow.store.calllog import ApiKey, PostgresCallLog, SQLiteCallLog
from slmflow.store.schema import LATEST

from .conftest import reset_pg


_reset_pg = reset_pg


@pytest.fixture
def store(call_log):  # each test runs on SQLite and on PostgreSQL (conftest.call_log)
    return call_log


def test_open_picks_the_backend_and_migrates(store):
    assert isinstance(store, SQLiteCallLog if store.dialect == "sqlite" else PostgresCallLog)
    assert store.schema_version() == LATEST
    url = store.url
    store.close()
    again = open_call_log(url)  # opening twice applies nothing twice
    assert again.schema_version() == LATEST
    again.close()


def test_append_get_query_usage(store):
    now = time.time()
    recs = [CallRecord(agent="router", model="smollm2-135m", key_name="a", input={"text": "hi"},
                       output={"category": "refund"}, latency_s=0.1, confidence=0.9,
                       input_tokens=10, output_tokens=3, cost_usd=0.001, ts=now - 10),
            CallRecord(agent="reasoner", model="smollm2-135m", key_name="a", input="x\x00y\ud800",
                       output="ok", input_tokens=5, output_tokens=7, escalated=True,
                       escalation_reason="low_confidence", cache="hit", ts=now - 5),
            CallRecord(agent="router", model="gpt", key_name="b", input_tokens=1,
                       output_tokens=1, ts=now - 3600)]
    assert store.append(recs) == 3
    got = store.get(recs[0].id)
    assert got is not None and got.input == {"text": "hi"} and got.output == {"category": "refund"}
    assert got.confidence == pytest.approx(0.9) and got.seq is not None
    odd = store.get(recs[1].id)
    assert odd.escalated and odd.input.startswith("x")  # NUL and lone surrogate survived safely
    assert [r.id for r in store.query(agent="router")] == [recs[0].id, recs[2].id]
    assert [r.id for r in store.query(since="30m")] == [recs[0].id, recs[1].id]
    assert store.count(key="a") == 2 and store.count(escalated=True) == 1
    rows = {(r["key"], r["model"]): r for r in store.usage(("key", "model"))}
    assert rows[("a", "smollm2-135m")]["input_tokens"] == 15
    assert rows[("a", "smollm2-135m")]["cache_hits"] == 1
    assert rows[("b", "gpt")]["calls"] == 1
    assert store.usage(("day",))[0]["calls"] == 3
    assert store.tokens_since("a", now - 60) == 25
    with pytest.raises(ConfigError):
        store.query(colour="red")


def test_iter_since_resumes_from_a_cursor(store):
    store.append([CallRecord(agent=f"a{i}") for i in range(7)])
    first = list(store.iter_since(0, batch=3))
    assert [r.agent for r in first] == [f"a{i}" for i in range(7)]
    cursor = first[3].seq
    assert [r.agent for r in store.iter_since(cursor, batch=2)] == ["a4", "a5", "a6"]


def test_feedback_on_calls_and_runs(store):
    rec = CallRecord(agent="router", run_id="run1")
    store.append([rec])
    fb = store.add_feedback(rec.id, signal="down", label="wrong_category",
                            correction={"category": "billing"}, by="ana")
    store.add_feedback(run_id="run1", signal="up")
    got = store.feedback(rec.id)
    assert len(got) == 1 and got[0].id == fb.id and got[0].correction == {"category": "billing"}
    assert store.feedback(run_id="run1")[0].signal == "up"
    with pytest.raises(ConfigError, match="no call"):
        store.add_feedback("missing", signal="up")
    with pytest.raises(ConfigError):
        store.add_feedback(rec.id)  # nothing to attach
    with pytest.raises(ConfigError):
        store.add_feedback(rec.id, signal="sideways")


def test_keys_store_only_hashes(store):
    from slmflow.gateway.auth import create_key, hash_key

    key, rec = create_key(store, "ci", models=["slm"], rpm=5)
    assert key.startswith("sk-slm-") and rec.key_hash == hash_key(key)
    assert store.find_key(hash_key(key)).models == ["slm"]
    with pytest.raises(ConfigError):
        create_key(store, "ci")
    assert store.revoke_key("ci") and not store.revoke_key("ci")
    assert store.find_key(hash_key(key)).revoked is not None
    assert isinstance(store.list_keys()[0], ApiKey)


def test_writer_loses_nothing_under_concurrency(store):
    w = CallLogWriter(store, batch_size=64)
    n_threads, per = 8, 250

    def work(t: int) -> None:
        for i in range(per):
            w.submit(CallRecord(agent=f"t{t}", input=i))

    threads = [threading.Thread(target=work, args=(t,)) for t in range(n_threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    w.close(close_log=False)  # close drains the queue
    assert w.written == w.submitted == n_threads * per
    assert store.count() == n_threads * per


def test_writer_retries_a_failing_store(tmp_path):
    log = open_call_log(tmp_path / "c.db")
    real = log.append
    fails = {"n": 3}

    def flaky(batch):
        if fails["n"] > 0:
            fails["n"] -= 1
            raise RuntimeError("disk hiccup")
        return real(batch)

    log.append = flaky  # type: ignore[method-assign]
    w = CallLogWriter(log)
    for i in range(10):
        w.submit(CallRecord(agent="x"))
    assert w.flush(20)
    assert w.failed_batches == 3 and log.count() == 10
    w.close()


def test_record_agent_result_and_escalation_example(tmp_path):
    from pydantic import BaseModel

    class Route(BaseModel):
        category: str

    log = open_call_log(tmp_path / "c.db")
    w = CallLogWriter(log)
    weak = FunctionModel(lambda m, s: {"category": "other"}, name="slm", confidence=0.1)
    strong = FunctionModel(lambda m, s: {"category": "refund"}, name="strong", confidence=0.99)
    agent = Agent("router", weak, output_type=Route, fallback=strong, confidence_threshold=0.5)
    res = agent.run_sync("my parcel is broken, refund me: bob@example.com")
    assert res.escalated
    rec = record_agent_result(res, "my parcel is broken, refund me: bob@example.com",
                              run_id="r1", trace_id="t1", key="k", writer=w,
                              redact=lambda v: v.replace("bob@example.com", "[EMAIL]")
                              if isinstance(v, str) else v)
    w.flush()
    got = log.get(rec.id)
    assert got.agent == "router" and got.model == "strong" and got.run_id == "r1"
    assert got.trace_id == "t1" and got.key_name == "k" and got.escalated
    assert got.output == {"category": "refund"} and "[EMAIL]" in got.input
    assert [a["role"] for a in got.meta["attempts"]] == ["primary", "fallback"]
    ex = log.examples("router")
    assert len(ex) == 1 and ex[0].output == {"category": "refund"}
    assert ex[0].source_model == "slm" and ex[0].target_model == "strong"
    assert ex[0].call_id == rec.id and ex[0].confidence == pytest.approx(0.1)
    w.close()


def test_call_logging_wrapper(tmp_path):
    log = open_call_log(tmp_path / "c.db")
    w = CallLogWriter(log)
    m = CallLogging(FunctionModel(lambda msgs, s: "pong", name="fm"), agent="pinger", writer=w)
    m.generate_sync("ping")
    w.flush()
    (rec,) = log.query()
    assert rec.kind == "model" and rec.agent == "pinger" and rec.output == "pong"
    assert rec.input == [{"role": "user", "content": "ping"}] and rec.model == "fm"
    w.close()


def test_writer_spills_to_a_file_when_the_store_is_gone(tmp_path):
    log = open_call_log(tmp_path / "c.db")

    def broken(batch):
        raise RuntimeError("gone")

    log.append = broken  # type: ignore[method-assign]
    w = CallLogWriter(log, unsent_path=tmp_path / "unsent.jsonl")
    w.submit(CallRecord(agent="x"))
    w.submit(Example(agent="x", input="a", output="b"))
    t0 = time.time()
    w.close(timeout=60)
    lines = (tmp_path / "unsent.jsonl").read_text().splitlines()
    assert len(lines) == 2 and time.time() - t0 < 60


def test_feedback_cli(tmp_path):
    from typer.testing import CliRunner

    from slmflow.cli import app

    url = f"sqlite:///{tmp_path / 'c.db'}"
    log = open_call_log(url)
    rec = CallRecord(agent="router")
    log.append([rec])
    log.close()
    r = CliRunner().invoke(app, ["feedback", rec.id, "--thumbs", "down", "--label", "wrong",
                                 "--correction", '{"category": "billing"}', "--call-log", url])
    assert r.exit_code == 0, r.output
    log = open_call_log(url)
    (fb,) = log.feedback(rec.id)
    assert fb.signal == "down" and fb.label == "wrong" and fb.correction == {"category": "billing"}
    log.close()


def test_bad_urls():
    with pytest.raises(ConfigError):
        open_call_log("mysql://x")
    with pytest.raises(ConfigError):
        open_call_log("sqlite://relative.db")
