"""The improvement loop's core on both stores: agent calls land in the call log by themselves,
flagging by rule with priority, budget and idempotence, reviews with conflicts, lineage tags.
Models here are FunctionModels (unit tests); the real-model proof is tests/test_loop_e2e.py."""

from __future__ import annotations

import contextlib
import time

import pytest
from pydantic import BaseModel

from slmflow import Agent, FunctionModel
from slmflow.errors import ConfigError
from slmflow.loop import FlagRules, LoopError, add_to_evals, flag_calls
from slmflow.loop.retrain import is_held_out
from slmflow.store import CallLogWriter, logging_context, open_call_log
from slmflow.store.review import ReviewConflict, ReviewError, ReviewQueue
from slmflow.workflow import Step, Workflow



class Route(BaseModel):
    intent: str


@pytest.fixture
def log(call_log):  # each test runs on SQLite and on PostgreSQL (conftest.call_log)
    return call_log


def _router(conf_for, answer_for=None, fallback=None):
    """A router whose confidence (and answer) depend on the text."""
    def fn(msgs, spec):
        text = msgs[-1].content
        return {"intent": (answer_for or (lambda t: "card"))(text)}

    m = FunctionModel(fn, name="slm")
    orig = m.generate

    async def gen(messages, **kw):  # per-call confidence
        r = await orig(messages, **kw)
        from dataclasses import replace

        return replace(r, confidence=conf_for(messages[-1].content))

    m.generate = gen  # type: ignore[method-assign]
    return Agent("router", m, output_type=Route, fallback=fallback, confidence_threshold=0.2)


@contextlib.contextmanager
def _logged(log, **ctx):
    """Agent calls in the body go to `log` (flushed on exit)."""
    w = CallLogWriter(log)
    with logging_context(writer=w, **ctx):
        yield
    assert w.flush()
    w.close(close_log=False)


def _traffic(log, agent, texts):
    with _logged(log, key="k1"):
        return [agent.run_sync(t) for t in texts]


def test_agent_calls_are_logged_with_schema_and_run_context(log):
    agent = _router(lambda t: 0.9)
    wf = Workflow("wf", [Step("router", agent=agent)])
    with _logged(log):
        rr = wf.run_sync("my card is lost")
        res = agent.run_sync("another")
    call = log.get(rr.steps[0].agent_result.call_id)
    assert call is not None and call.run_id == rr.run_id and call.workflow == "wf"
    assert call.meta["step"] == "router" and call.output == {"intent": "card"}
    assert log.get(res.call_id).run_id is None
    info = log.agent_info("router")
    assert info.output_schema["properties"]["intent"]["type"] == "string"


def test_logging_can_be_turned_off(log, monkeypatch):
    from slmflow.store.writer import log_agent_call

    agent = _router(lambda t: 0.9)
    res = agent.run_sync("x")
    monkeypatch.setenv("SLMFLOW_CALLLOG", "off")
    assert log_agent_call(agent, res, "x") is None
    monkeypatch.setenv("SLMFLOW_CALLLOG", "on")  # the process-wide writer takes it
    assert log_agent_call(agent, res, "x") == res.call_id


def test_flag_rules_priority_budget_and_idempotence(log):
    strong = FunctionModel(lambda m, s: {"intent": "refund"}, name="strong", confidence=0.99)
    agent = _router(lambda t: 0.05 if "low" in t else (0.3 if "mid" in t else 0.95),
                    answer_for=lambda t: "card", fallback=strong)
    texts = ["low one", "low two", "mid one", "fine one", "fine two", "fine three"]
    res = dict(zip(texts, _traffic(log, agent, texts)))
    assert res["low one"].escalated and not res["fine one"].escalated
    # user feedback: a thumbs down, a correction, a verifier rejection
    log.add_feedback(res["fine one"].call_id, signal="down", by="alice")
    log.add_feedback(res["fine two"].call_id, correction={"intent": "refund"}, by="bob")
    log.add_feedback(res["fine three"].call_id, signal="down", by="verifier:check",
                     label="verifier_rejected")

    rep = flag_calls(log, since="1h", rules=FlagRules(confidence_below=0.5, budget_per_agent=4))
    assert rep.scanned == 6 and rep.candidates == 6
    assert rep.flagged == {"router": 4} and rep.over_budget == {"router": 2}
    q = ReviewQueue(log)
    items = q.items("router")
    assert [i.priority for i in items] == sorted((i.priority for i in items), reverse=True)
    by_call = {i.call_id: i for i in items}
    # a user's correction first (1.2), then escalated + the fallback disagreed (0.4 + 0.7)
    assert items[0].reasons == ["user_correction"]
    assert set(items[1].reasons) == {"escalated", "fallback_disagreement"}
    assert by_call[res["fine two"].call_id].correction == {"intent": "refund"}  # pre-filled
    assert "user_correction" in by_call[res["fine two"].call_id].reasons
    # idempotent: nothing new while the budget is full; the rest once there is room
    again = flag_calls(log, since="1h", rules=FlagRules(confidence_below=0.5,
                                                        budget_per_agent=4))
    assert again.total == 0 and again.already_queued == 4
    more = flag_calls(log, since="1h", rules=FlagRules(confidence_below=0.5,
                                                       budget_per_agent=None))
    assert more.total == 2
    assert flag_calls(log, since="1h", rules=FlagRules(budget_per_agent=None)).total == 0
    reasons = {r for i in q.items("router", limit=None) for r in i.reasons}
    assert {"verifier_rejection", "negative_feedback", "user_correction"} <= reasons
    runs = log._all("SELECT flagged FROM flag_runs ORDER BY seq", ())
    assert [r[0] for r in runs] == [4, 0, 2, 0]


def test_flag_window_and_rule_selection(log):
    agent = _router(lambda t: 0.1)
    _traffic(log, agent, ["a", "b"])
    assert flag_calls(log, since=time.time() + 10).total == 0  # window in the future
    assert flag_calls(log, since="1h", rules=FlagRules(rules=("escalated",))).total == 0
    assert flag_calls(log, since="1h", dry_run=True).total == 2
    assert ReviewQueue(log).items() == []  # dry run wrote nothing
    with pytest.raises(ConfigError, match="unknown flag rule"):
        FlagRules(rules=("nope",))


def test_run_feedback_flags_every_agent_call_of_the_run(log):
    agent = _router(lambda t: 0.99)
    wf = Workflow("wf", [Step("router", agent=agent)])
    with _logged(log):
        rr = wf.run_sync("hello")
    log.add_feedback(run_id=rr.run_id, signal="down", by="carol")
    rep = flag_calls(log, since="1h")
    assert rep.flagged == {"router": 1} and rep.by_reason == {"negative_feedback": 1}


def test_reviews_conflicts_orphans_and_bad_corrections(log):
    agent = _router(lambda t: 0.1)
    res = _traffic(log, agent, ["one", "two", "three"])
    flag_calls(log, since="1h")
    q = ReviewQueue(log)
    items = {i.call_id: i for i in q.items()}
    a, b, c = (items[r.call_id] for r in res)
    done = q.review(a.id, "correct", reviewer="alice", correction={"intent": "refund"})
    assert done.status == "reviewed" and done.correction == {"intent": "refund"}
    assert done.target == {"intent": "refund"}
    # a double submit of the same decision is answered, a different reviewer is refused
    assert q.review(a.id, "correct", reviewer="alice",
                    correction={"intent": "refund"}).reviewer == "alice"
    with pytest.raises(ReviewConflict, match="already reviewed by alice"):
        q.review(a.id, "accept", reviewer="bob")
    # a correction must fit the agent's output schema
    with pytest.raises(ReviewError, match="does not fit agent router"):
        q.review(b.id, "correct", reviewer="bob", correction={"intent": 3})
    with pytest.raises(ConfigError, match="reviewer"):
        q.review(b.id, "accept", reviewer=" ")
    with pytest.raises(ReviewError, match="no review item"):
        q.review("nope", "accept", reviewer="bob")
    assert q.review(b.id, "accept", reviewer="bob").target == {"intent": "card"}
    # the call behind c is deleted: the review is refused and the item closed
    with log._tx() as cur:
        log._exec(cur, "DELETE FROM calls WHERE id = ?", (c.call_id,))
    with pytest.raises(ReviewError, match="no longer exists"):
        q.review(c.id, "accept", reviewer="bob")
    assert q.get(c.id).status == "orphaned"
    assert q.stats()["router"] == {"correct": 1, "accept": 1, "orphaned": 1}


def test_add_to_evals_and_too_few_examples(log, tmp_path):
    from slmflow.loop import retrain_agent

    agent = _router(lambda t: 0.1)
    res = _traffic(log, agent, ["one", "two"])
    flag_calls(log, since="1h")
    q = ReviewQueue(log)
    for it in q.items():
        q.review(it.id, "correct", reviewer="alice", correction={"intent": "refund"})
    path = tmp_path / "evals.jsonl"
    assert add_to_evals(log, "router", path) == 2
    assert add_to_evals(log, "router", path) == 0  # de-duplicated by input
    rows = path.read_text().splitlines()
    assert len(rows) == 2 and '"intent": "refund"' in rows[0]
    assert all(any(u.startswith("evals:") for u in i.used_in)
               for i in q.items(status="reviewed"))
    with pytest.raises(LoopError, match="needs at least 5"):
        retrain_agent(agent, log, min_new=5)
    assert {r.call_id for r in res} == {i.call_id for i in q.items(status=None)}


def test_hold_out_is_stable():
    ids = [f"{i:032x}" for i in range(2000)]
    share = sum(is_held_out(i, 0.3) for i in ids) / len(ids)
    assert 0.25 < share < 0.35
    assert [is_held_out(i, 0.3) for i in ids] == [is_held_out(i, 0.3) for i in ids]


def test_online_evaluator_failures_feed_the_flag_job(log):
    from slmflow.loop import evaluate_calls

    agent = Agent("replier", FunctionModel(
        lambda m, s: "you idiot, shut up" if "angry" in m[-1].content else "Happy to help!",
        name="slm", confidence=0.99))
    _traffic(log, agent, ["angry customer", "calm customer", "angry again"])
    rep = evaluate_calls(log, "toxicity", agent="replier", since="1h")
    assert (rep.checked, rep.failed) == (3, 2)
    assert evaluate_calls(log, "toxicity", agent="replier", since="1h").skipped == 3
    flagged = flag_calls(log, since="1h")
    assert flagged.flagged == {"replier": 2} and flagged.by_reason == {"failed_eval": 2}
    inputs = {log.get(i.call_id).input for i in ReviewQueue(log).items()}
    assert inputs == {"angry customer", "angry again"}


def test_a_crash_mid_retrain_changes_nothing(log, tmp_path, monkeypatch):
    """Training dies (a kill, a full disk): no adapter promoted, no review marked as used, and
    running the command again starts from the same reviewed items."""
    import slmflow.finetune.agent_train as at
    from slmflow.finetune.registry import AdapterRegistry
    from slmflow.loop import retrain_agent

    agent = _router(lambda t: 0.1)
    _traffic(log, agent, [f"ticket {i}" for i in range(6)])
    flag_calls(log, since="1h")
    q = ReviewQueue(log)
    for it in q.items():
        q.review(it.id, "correct", reviewer="alice", correction={"intent": "refund"})
    reg = AdapterRegistry(tmp_path / "adapters")

    def boom(*a, **k):
        raise KeyboardInterrupt("killed mid-epoch")

    monkeypatch.setattr(at, "train_agent", boom)
    with pytest.raises(KeyboardInterrupt):
        retrain_agent(agent, log, registry=reg, min_new=5, say=lambda s: None)
    assert reg.promoted("router") is None and reg.versions("router") == []
    assert all(i.used_in == [] for i in q.items(status="reviewed"))


def test_cli_flag_schedule_queue_review(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from slmflow.cli import app

    url = f"sqlite:///{tmp_path / 'calls.db'}"
    log = open_call_log(url)
    _traffic(log, _router(lambda t: 0.1), ["one", "two"])
    log.close()
    run = CliRunner().invoke
    cron = run(app, ["loop", "schedule", "--every", "24h", "--at", "02:30", "--calls", url])
    assert cron.exit_code == 0 and "30 2 * * *" in cron.stdout and "loop flag --since 24h" \
        in cron.stdout
    looped = run(app, ["loop", "schedule", "--run", "--max-runs", "1", "--every", "1h",
                       "--calls", url])
    assert looped.exit_code == 0, looped.stdout
    assert "2 matched" in looped.stdout and "2 queued now" in looped.stdout
    again = run(app, ["loop", "flag", "--since", "1h", "--json", "--calls", url])
    assert again.exit_code == 0 and '"total": 0' in again.stdout  # idempotent
    log = open_call_log(url)
    item = ReviewQueue(log).items()[0]
    log.close()
    ok = run(app, ["loop", "review", item.id[:8], "--correct", '{"intent": "refund"}',
                   "--reviewer", "rita", "--calls", url])
    assert ok.exit_code == 0 and "correct by rita" in ok.stdout
    q = run(app, ["loop", "queue", "--status", "all", "--calls", url])
    assert q.exit_code == 0 and "correct 1" in q.stdout and "pending 1" in q.stdout


def test_gate_can_score_with_the_agents_suite_evaluators():
    from slmflow.finetune.data import Example
    from slmflow.loop.retrain import suite_score

    agent = _router(lambda t: 0.9, answer_for=lambda t: "refund" if "money" in t else "card")
    cases = [Example(f"money back {i}", {"intent": "refund"}) for i in range(3)] + \
        [Example("lost card", {"intent": "card"}), Example("hello", {"intent": "refund"})]
    scores = suite_score([{"name": "routing", "field": "intent"}, "exact_match"])(agent, cases)
    assert scores["accuracy"] == pytest.approx(0.8) and scores["ok_rate"] == 1.0
    assert scores["exact_match"] == pytest.approx(0.8)


def test_eval_traffic_stays_out_of_the_call_log(log):
    from slmflow.evals import run_suite

    agent = _router(lambda t: 0.1)
    with _logged(log):
        run_suite(agent, [{"id": "a", "input": "x", "expected": {"intent": "card"}}],
                  ["exact_match"])
        agent.run_sync("production")
    assert [c.input for c in log.query(kind="agent")] == ["production"]
