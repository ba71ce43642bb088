"""Judges that learn from reviewers (#17 item 4): a reviewer marks a judge's verdict on a flagged
item right or wrong (store on SQLite and PostgreSQL, the review UI's route, the CLI), and
`retrain_judge` turns those decisions into a few-shot rubric and a LoRA, promoting one only when
it raises Cohen's kappa on held-out decisions.

The gate tests use fake judge models (FunctionModel) whose behaviour is known: one that learns
from few-shot examples, one that only memorises them. The LoRA path is proven once on the real
embedded SmolLM2-135M (slow)."""

from __future__ import annotations

import hashlib
import json
import shutil
import threading

import httpx
import pytest

from slmflow import FunctionModel
from slmflow.errors import ConfigError
from slmflow.evals import learned
from slmflow.evals.builtin import Judge
from slmflow.loop import evaluate_calls, flag_calls
from slmflow.loop.judges import retrain_judge
from slmflow.loop.retrain import LoopError
from slmflow.store import CallRecord, open_call_log
from slmflow.store.judges import JudgeReviews
from slmflow.store.review import ReviewConflict, ReviewError, ReviewQueue
from slmflow.store.schema import LATEST

RUBRIC = "Decide if the ANSWER is polite. 'pass': polite. 'fail': rude or dismissive."


def _answer(i: int) -> tuple[str, bool]:
    """(answer, polite?): every third answer is rude."""
    if i % 3 == 0:
        return f"Order {i}? Figure it out yourself.", False
    return f"Thanks for asking: order {i} ships tomorrow.", True


def _says(label: str) -> dict:
    return {"verdict": label, "score": 4 if label == "pass" else 2, "reason": "checked"}


def always_pass(msgs, spec):
    return _says("pass")


def learner(msgs, spec):
    """With examples in the prompt it has 'learned' the rule; without, it passes everything."""
    if len(msgs) > 2:
        return _says("fail" if "yourself" in msgs[-1].content else "pass")
    return _says("pass")


def memoriser(msgs, spec):
    """Copies the verdict of a few-shot example with the very same case, else passes: right on
    its training decisions, no better than before on anything else."""
    for q, a in zip(msgs[1:-1:2], msgs[2:-1:2]):
        if q.content == msgs[-1].content:
            return json.loads(a.content)
    return _says("pass")


def _judge(fn, **kw):
    return Judge(RUBRIC, model=FunctionModel(fn, name="fake-judge"), name="tone", **kw)


def _seed(log, n=12, *, judge_fn=always_pass, judged=None):
    """n support calls (low confidence, so all are flagged), judged online by 'tone'; returns
    {call_id: polite?}. judged: only these indices get a judge verdict."""
    truth, recs = {}, []
    for i in range(n):
        text, ok = _answer(i)
        r = CallRecord(agent="support", input=f"where is order {i}?", output=text,
                       confidence=0.2, trace_id=f"{i:032x}", model="slm",
                       id=hashlib.sha256(f"call {i}".encode()).hexdigest()[:32])
        truth[r.id] = ok
        recs.append(r)
    log.append(recs)
    if judged is not None:
        keep = {recs[i].id for i in judged}
        with log._tx() as cur:  # hide the others from the online job's window
            for r in recs:
                if r.id not in keep:
                    log._exec(cur, "UPDATE calls SET agent = 'other' WHERE id = ?", (r.id,))
    evaluate_calls(log, _judge(judge_fn, learned=False), agent="support", since="1h")
    with log._tx() as cur:
        log._exec(cur, "UPDATE calls SET agent = 'support'", ())
    flag_calls(log, since="1h")
    return truth


def _decide_all(log, truth, reviewer="alice"):
    jr = JudgeReviews(log)
    for it in ReviewQueue(log).items(limit=None):
        if jr.verdicts(it.call_id):
            v = jr.verdicts(it.call_id)[0]
            jr.decide(it.id, "right" if v.passed == truth[it.call_id] else "wrong",
                      reviewer=reviewer)


# ---- the store ------------------------------------------------------------------------------

def test_judge_decision_round_trip(call_log):
    """On SQLite and on a real PostgreSQL server (conftest.call_log)."""
    log = call_log
    assert log.schema_version() == LATEST >= 5
    truth = _seed(log, 4)
    jr = JudgeReviews(log)
    assert list(jr.judges()) == ["tone"] and jr.judge("tone").spec["rubric"] == RUBRIC
    items = {i.call_id: i for i in ReviewQueue(log).items(limit=None)}
    rude = next(c for c, ok in truth.items() if not ok)
    polite = next(c for c, ok in truth.items() if ok)
    v = jr.verdicts(rude)[0]
    assert (v.judge, v.label, v.passed, v.reason) == ("tone", "pass", True, "checked")
    wrong = jr.decide(items[rude].id, "wrong", reviewer="alice", note="it is rude")
    right = jr.decide(items[polite].id, "right", reviewer="bob")
    assert (wrong.judge_label, wrong.judge_passed, wrong.judge_right, wrong.label,
            wrong.passed) == ("pass", True, False, "fail", False)
    assert (right.judge_right, right.label, right.passed) == (True, "pass", True)

    again = open_call_log(log.url)  # durable: another connection reads the same
    try:
        got = {d.item_id: d for d in JudgeReviews(again).decisions("tone")}
        assert got[items[rude].id].as_dict() == wrong.as_dict()
        assert got[items[polite].id].note is None and got[items[polite].id].reviewer == "bob"
        shown = JudgeReviews(again).verdicts_for_item(items[rude].id)
        assert shown[0].decision.verdict == "wrong"
    finally:
        again.close()
    # the same decision again is answered with the stored one; a different one conflicts
    assert jr.decide(items[rude].id, "wrong", reviewer="alice").id == wrong.id
    with pytest.raises(ReviewConflict, match="already reviewed by alice"):
        jr.decide(items[rude].id, "right", reviewer="carol")
    # the item's own review is independent of the judge decision
    assert ReviewQueue(log).get(items[rude].id).status == "pending"
    jr.mark_used([wrong.id], "judge:tone@v1")
    assert jr.decisions("tone", item_id=items[rude].id)[0].used_in == ["judge:tone@v1"]


# ---- bad input ------------------------------------------------------------------------------

def test_bad_judge_decisions_say_what_and_where(tmp_path):
    log = open_call_log(tmp_path / "calls.db")
    truth = _seed(log, 4, judged=[0, 1])  # calls 2 and 3 are flagged but never judged
    jr = JudgeReviews(log)
    items = {i.call_id: i for i in ReviewQueue(log).items(limit=None)}
    unjudged = next(i for c, i in items.items() if not jr.verdicts(c))
    judged = next(i for c, i in items.items() if jr.verdicts(c))
    with pytest.raises(ReviewError, match="carries no judge verdict") as e:
        jr.decide(unjudged.id, "right", reviewer="alice")
    assert unjudged.id in e.value.message and "low_confidence" in e.value.message
    assert e.value.where == f"judge review {unjudged.id}"
    with pytest.raises(ConfigError, match="unknown judge 'nope'.*tone") as e:
        jr.decide(judged.id, "right", reviewer="alice", judge="nope")
    assert e.value.where.startswith(f"judge review {judged.id}")
    with pytest.raises(ConfigError, match="'right' or 'wrong', got 'maybe'"):
        jr.decide(judged.id, "maybe", reviewer="alice")
    with pytest.raises(ConfigError, match="reviewer's name"):
        jr.decide(judged.id, "right", reviewer=" ")
    with pytest.raises(ConfigError, match="a label other than the judge's"):
        jr.decide(judged.id, "wrong", reviewer="alice", label="pass")
    with pytest.raises(ConfigError, match="not one of judge tone's labels"):
        jr.decide(judged.id, "wrong", reviewer="alice", label="rude")
    with pytest.raises(ReviewError, match="no review item"):
        jr.decide("0" * 32, "right", reviewer="alice")
    assert jr.decisions() == []  # nothing recorded by any of these

    with pytest.raises(ConfigError, match="unknown judge 'nope'; judges in the call log: tone"):
        retrain_judge("nope", log, say=lambda s: None, root=tmp_path / "judges")
    _decide_all(log, truth)
    with pytest.raises(LoopError, match="judge tone has 2 reviewed verdict.*at least 8") as e:
        retrain_judge("tone", log, evaluator=_judge(learner, learned=False), lora=False,
                      say=lambda s: None, root=tmp_path / "judges")
    assert "loop retrain --judge tone" in e.value.where and str(tmp_path) in e.value.where
    with pytest.raises(ConfigError, match="must exceed min_holdout"):
        retrain_judge("tone", log, min_decisions=2, min_holdout=2, say=lambda s: None)
    with pytest.raises(ConfigError, match="ran with a model object.*--judge-model"):
        retrain_judge("tone", log, min_decisions=2, min_holdout=1, say=lambda s: None)
    log.close()


def test_cli_review_records_a_judge_verdict(tmp_path):
    from typer.testing import CliRunner

    from slmflow.cli import app

    url = f"sqlite:///{tmp_path / 'calls.db'}"
    log = open_call_log(url)
    truth = _seed(log, 3, judged=[0])
    items = {i.call_id: i for i in ReviewQueue(log).items(limit=None)}
    log.close()
    judged = next(c for c, ok in truth.items() if not ok)  # index 0: rude, judged 'pass'
    other = next(i for c, i in items.items() if c != judged)
    run = CliRunner().invoke
    ok = run(app, ["loop", "review", items[judged].id[:10], "--judge-verdict", "wrong",
                   "--reject", "--reviewer", "rita", "--calls", url])
    assert ok.exit_code == 0, ok.output
    assert "judge tone wrong (it said pass; right label fail) by rita" in ok.output
    assert "reject by rita" in ok.output
    bad = run(app, ["loop", "review", other.id[:10], "--judge-verdict", "right",
                    "--reviewer", "rita", "--calls", url])
    assert bad.exit_code != 0 and "carries no judge verdict" in str(bad.exception)
    log = open_call_log(url)
    d = JudgeReviews(log).decisions("tone")
    assert [(x.item_id, x.label, x.reviewer) for x in d] == [(items[judged].id, "fail", "rita")]
    assert ReviewQueue(log).get(items[judged].id).verdict == "reject"
    log.close()
    # retrain --judge: exactly one of --agent / --judge; an unknown judge; a judge that ran on a
    # model object the log cannot rebuild
    neither = run(app, ["loop", "retrain", "--calls", url])
    assert neither.exit_code != 0 and "--judge NAME" in str(neither.exception)
    unknown = run(app, ["loop", "retrain", "--judge", "nope", "--calls", url])
    assert "unknown judge 'nope'; judges in the call log: tone" in str(unknown.exception)
    few = run(app, ["loop", "retrain", "--judge", "tone", "--calls", url])
    assert "judge tone has 1 reviewed verdict(s)" in str(few.exception)
    zero = run(app, ["loop", "retrain", "--judge", "tone", "--min-decisions", "1",
                     "--min-holdout", "0", "--calls", url])
    assert "must exceed min_holdout" in str(zero.exception)


# ---- the review UI --------------------------------------------------------------------------

@pytest.fixture
def site(tmp_path):
    from slmflow.ui.traces import serve

    log = open_call_log(tmp_path / "calls.db")
    truth = _seed(log, 3, judged=[0, 1])
    server = serve("127.0.0.1", 0, db_path=tmp_path / "spans.db", calls=log)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}", log, truth
    server.shutdown()
    server.server_close()
    log.close()


def test_review_ui_takes_a_judge_verdict(site):
    base, log, truth = site
    jr = JudgeReviews(log)
    items = {i.call_id: i for i in ReviewQueue(log).items(limit=None)}
    rude = next(c for c, ok in truth.items() if not ok and jr.verdicts(c))
    unjudged = next(i for c, i in items.items() if not jr.verdicts(c))
    item = items[rude]
    data = httpx.get(f"{base}/api/review/{item.id}").json()
    assert [(j["judge"], j["label"], j["decision"]) for j in data["judges"]] == \
        [("tone", "pass", None)]
    page = httpx.get(f"{base}/review/{item.id}")
    assert page.status_code == 200 and "judge verdicts" in page.text and "judge-wrong" \
        in page.text
    r = httpx.post(f"{base}/api/review/{item.id}/judge",
                   json={"judge": "tone", "verdict": "wrong", "label": "fail",
                         "reviewer": "alice"})
    assert r.status_code == 200, r.text
    assert (r.json()["decision"]["verdict"], r.json()["decision"]["label"]) == ("wrong", "fail")
    assert jr.decisions("tone")[0].reviewer == "alice"
    assert httpx.get(f"{base}/api/review/{item.id}").json()["judges"][0]["decision"][
        "reviewer"] == "alice"
    # a second reviewer with another decision: 409, the first stands
    r = httpx.post(f"{base}/api/review/{item.id}/judge",
                   json={"verdict": "right", "reviewer": "bob"})
    assert r.status_code == 409 and "already reviewed by alice" in r.json()["error"]
    # no judge verdict on the item: 422 naming it; unknown judge, bad verdict: 400; no item: 404
    r = httpx.post(f"{base}/api/review/{unjudged.id}/judge",
                   json={"verdict": "right", "reviewer": "alice"})
    assert r.status_code == 422 and "carries no judge verdict" in r.json()["error"]
    r = httpx.post(f"{base}/api/review/{item.id}/judge",
                   json={"judge": "nope", "verdict": "right", "reviewer": "alice"})
    assert r.status_code == 400 and "unknown judge 'nope'" in r.json()["error"]
    r = httpx.post(f"{base}/api/review/{item.id}/judge",
                   json={"verdict": "maybe", "reviewer": "alice"})
    assert r.status_code == 400 and "'right' or 'wrong'" in r.json()["error"]
    assert httpx.post(f"{base}/api/review/{'0' * 32}/judge",
                      json={"verdict": "right", "reviewer": "a"}).status_code == 404
    assert len(jr.decisions()) == 1
    assert ReviewQueue(log).get(item.id).status == "pending"  # the item's own review is apart


@pytest.mark.skipif(not (shutil.which("chromium") or shutil.which("chromium-browser")),
                    reason="no chromium (run .ci/install-system-deps.sh)")
def test_judge_buttons_in_a_real_browser(site):
    """The item page's "judge wrong, it is: [label]" button in headless Chromium."""
    pw = pytest.importorskip("playwright.sync_api")
    base, log, truth = site
    jr = JudgeReviews(log)
    item = next(i for i in ReviewQueue(log).items(limit=None)
                if not truth[i.call_id] and jr.verdicts(i.call_id))
    with pw.sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=shutil.which("chromium") or shutil.which("chromium-browser"),
            args=["--no-sandbox", "--disable-dev-shm-usage"])
        page = browser.new_page()
        page.goto(f"{base}/review/{item.id}?reviewer=alice")
        page.wait_for_selector(".judge .judge-wrong")
        assert "tone said pass" in page.text_content(".judge")
        page.select_option(".judge-label", "fail")
        page.click(".judge-wrong")
        page.wait_for_selector(".judge-done")
        assert "judge wrong (fail) by alice" in page.text_content(".judge-done")
        browser.close()
    got = [(d.item_id, d.label, d.reviewer) for d in jr.decisions("tone")]
    assert got == [(item.id, "fail", "alice")]
    assert ReviewQueue(log).get(item.id).status == "pending"


# ---- the promotion gate ---------------------------------------------------------------------

def _ready(tmp_path, n=12):
    log = open_call_log(tmp_path / "calls.db")
    truth = _seed(log, n)
    _decide_all(log, truth)
    return log, truth


def test_a_few_shot_rubric_that_raises_held_out_kappa_is_promoted(tmp_path):
    log, truth = _ready(tmp_path)
    root = tmp_path / "judges"
    res = retrain_judge("tone", log, evaluator=_judge(learner, learned=False), lora=True,
                        say=lambda s: None, root=root)
    decs = {d.id: d for d in JudgeReviews(log).decisions("tone")}
    held = set(res.held_out_ids)
    assert len(held) >= 4 and held.isdisjoint(res.train_ids)
    assert set(res.train_ids) | held == set(decs)
    # kappa on the held-out decisions only: the bare rubric passes everything (kappa 0), the
    # learner with examples is right on every case
    assert res.current is None and res.current_scores["n"] == len(held)
    assert res.current_scores["kappa"] == 0.0
    assert res.candidates == {"v1": {"kind": "few_shot", "adapter": None, "scores": {
        "kappa": 1.0, "accuracy": 1.0, "n": len(held), "errored": 0}}}
    assert any("LoRA candidate skipped" in n and "cannot be fine-tuned" in n for n in res.notes)
    assert res.promoted == "v1" and learned.promoted_version("tone", root) == "v1"
    rubric = learned.load_rubric("tone", "v1", root)
    shot_ids = {s["review_id"] for s in rubric["few_shot"]}
    assert shot_ids and shot_ids <= set(res.train_ids)
    assert {s["verdict"]["verdict"] for s in rubric["few_shot"]} == {"pass", "fail"}
    assert rubric["lineage"]["held_out_review_ids"] == sorted(held)
    assert rubric["lineage"]["reviewers"] == ["alice"] and rubric["lineage"]["trace_ids"]
    used = {d.id: d.used_in for d in JudgeReviews(log).decisions("tone")}
    assert all(used[i] == ["judge:tone@v1"] for i in res.train_ids)
    assert all(used[i] == ["judge-gate:tone@v1"] for i in held)

    # the judge evaluator loads the promoted rubric when built
    import os

    os.environ["SLMFLOW_HOME"], old = str(tmp_path), os.environ["SLMFLOW_HOME"]
    try:
        ev = _judge(learner)
        assert ev.learned_version == "v1" and len(ev.judge.few_shot) == len(rubric["few_shot"])
        assert _judge(learner, learned=False).judge.few_shot == []
    finally:
        os.environ["SLMFLOW_HOME"] = old

    # again: the candidate ties the serving v1 (kappa 1.0): not promoted, v1 keeps judging
    res2 = retrain_judge("tone", log, evaluator=_judge(learner, learned=False), lora=False,
                         say=lambda s: None, root=root)
    assert res2.current == "v1" and res2.current_scores["kappa"] == 1.0
    assert res2.candidates["v2"]["scores"]["kappa"] == 1.0 and res2.promoted is None
    assert learned.promoted_version("tone", root) == "v1"
    assert [h["action"] for h in learned.history("tone", root)] == ["promoted", "rejected"]


def test_min_gain_holds_back_a_candidate_that_gains_less(tmp_path):
    """`min_gain` (CLI `--min-gain`): a candidate must beat the serving judge's held-out kappa
    by more than it; the learner's gain is 1.0, so a min_gain of 1.0 keeps the base rubric."""
    log, _ = _ready(tmp_path)
    root = tmp_path / "judges"
    res = retrain_judge("tone", log, evaluator=_judge(learner, learned=False), lora=False,
                        min_gain=1.0, say=lambda s: None, root=root)
    assert res.candidates["v1"]["scores"]["kappa"] == 1.0 and res.current_scores["kappa"] == 0.0
    assert res.promoted is None and learned.promoted_version("tone", root) is None
    assert learned.history("tone", root)[-1]["action"] == "rejected"
    res = retrain_judge("tone", log, evaluator=_judge(learner, learned=False), lora=False,
                        min_gain=0.5, say=lambda s: None, root=root)
    assert res.promoted == "v2"


def test_the_gate_measures_held_out_decisions_not_training_ones(tmp_path):
    """A judge that only memorises its examples is perfect on the decisions it learned from and
    no better on held-out ones: not promoted."""
    log, truth = _ready(tmp_path)
    root = tmp_path / "judges"
    ev = _judge(memoriser, learned=False)
    res = retrain_judge("tone", log, evaluator=ev, lora=False, shots=12, say=lambda s: None,
                        root=root)
    assert res.promoted is None and learned.promoted_version("tone", root) is None
    cand = res.candidates["v1"]
    assert cand["scores"]["kappa"] <= res.current_scores["kappa"]
    # on its own training decisions the same candidate agrees perfectly: the gate did not ask
    from slmflow.loop.judges import _variant, judge_kappa

    rubric = learned.load_rubric("tone", "v1", root)
    calls = log.get_many(s["call_id"] for s in rubric["few_shot"])
    decs = {d.id: d for d in JudgeReviews(log).decisions("tone")}
    from slmflow.evals.base import Case

    rows = [(Case(id=c.id, input=c.input), c.output, decs[s["review_id"]].passed)
            for s in rubric["few_shot"] for c in [calls[s["call_id"]]]]
    assert len({h for *_, h in rows}) == 2
    assert judge_kappa(_variant(ev, rubric), rows)["kappa"] == 1.0
    assert all(d.used_in == [] for d in JudgeReviews(log).decisions("tone"))
    assert learned.history("tone", root)[-1]["action"] == "rejected"


# ---- end to end on the real SmolLM2-135M ------------------------------------------------------

@pytest.mark.slow
def test_lora_judge_on_smollm2_registers_a_version(tmp_path, monkeypatch):
    """The real judge (SmolLM2-135M on llama.cpp) judges logged calls online; a reviewer marks
    its verdicts; `retrain_judge` trains a tiny LoRA for it with the agent trainer, registers it
    (lineage: parent, trace ids, reviews), scores it on the held-out decisions and promotes it
    only if kappa rose."""
    from slmflow.finetune.registry import AdapterRegistry
    from slmflow.finetune.trainer import TrainConfig

    monkeypatch.setenv("SLMFLOW_LLAMA_THREADS", "1")
    log = open_call_log(tmp_path / "calls.db")
    recs = []
    truth = {}
    for i in range(6):
        text, ok = _answer(i)
        r = CallRecord(agent="support", input=f"where is order {i}?", output=text,
                       confidence=0.2, trace_id=f"{i:032x}")
        truth[r.id] = ok
        recs.append(r)
    log.append(recs)
    judge = Judge(RUBRIC, model="smollm2-135m", name="tone", include=("input", "output"),
                  max_tokens=48, learned=False)
    rep = evaluate_calls(log, judge, agent="support", since="1h")
    assert rep.checked == 6 and not rep.errors
    flag_calls(log, since="1h")
    _decide_all(log, truth)
    reg = AdapterRegistry(tmp_path / "adapters")
    root = tmp_path / "judges"
    res = retrain_judge("tone", log, few_shot=False, lora=True, min_decisions=6, min_holdout=2,
                        config=TrainConfig(r=4, alpha=8, max_steps=2, max_len=128, batch_size=2),
                        threads=1, registry=reg, root=root, progress=False,
                        run_dir=tmp_path / "run", say=lambda s: None)
    assert list(res.candidates) == ["v1"] and res.candidates["v1"]["kind"] == "lora"
    assert res.candidates["v1"]["adapter"] == "judge.tone@v1"
    assert reg.versions("judge.tone") == ["v1"]
    card = reg.card("judge.tone", "v1")
    assert card["lineage"]["parent"] is None
    assert set(card["lineage"]["trace_ids"]) <= {r.trace_id for r in recs}
    assert card["lineage"]["trace_ids"]
    assert card["lineage"]["loop"]["judge"] == "tone"
    assert card["lineage"]["loop"]["review_ids"] == res.train_ids
    assert card["eval_scores"]["kappa"] == res.candidates["v1"]["scores"]["kappa"]
    assert (reg.path("judge.tone", "v1") / "adapter.gguf").is_file()
    assert res.candidates["v1"]["scores"]["n"] == len(res.held_out_ids) >= 2
    rises = res.candidates["v1"]["scores"]["kappa"] > res.current_scores["kappa"]
    assert (res.promoted == "v1") == rises
    assert (reg.promoted("judge.tone") == "v1") == rises
    assert learned.load_rubric("tone", "v1", root)["adapter"] == "judge.tone@v1"
    log.close()
