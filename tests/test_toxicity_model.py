"""Toxicity: the alt-profanity-check classifier combined with the lexicon's threat/hate/insult
groups, the lexicon fallback, bad input, and agreement with the hand-labelled sets."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from slmflow import FunctionModel
from slmflow.evals import Case, create, run_suite
from slmflow.guardrails import (GuardPolicy, Guarded, ToxicityEngineError, check_text,
                                set_toxicity_engine, toxicity, toxicity_engine_info)
from slmflow.guardrails import toxicity_model as tm
from slmflow.guardrails.detectors import lexicon_toxicity

pytest.importorskip("profanity_check")

DATA = Path(__file__).resolve().parents[1] / "src" / "slmflow" / "evals" / "datasets"


@pytest.fixture(autouse=True)
def _fresh_engine():
    set_toxicity_engine(None)
    yield
    set_toxicity_engine(None)


def _rows(name):
    return [json.loads(line) for line in (DATA / name).read_text().splitlines()]


def _f1(rows, score):
    tp = fp = fn = 0
    for r in rows:
        pred, gold = score(r["output"]) >= 0.5, r["label"] == "toxic"
        tp, fp, fn = tp + (pred and gold), fp + (pred and not gold), fn + (gold and not pred)
    p, rc = tp / max(1, tp + fp), tp / max(1, tp + fn)
    return 2 * p * rc / (p + rc) if p + rc else 0.0


def test_the_classifier_is_the_default_and_reads_what_the_lexicon_misses():
    assert toxicity_engine_info()["engine"] == "classifier"
    for t in ("You are a spineless coward hiding behind a script.", "f*ck you",
              "You incompetent fool, I told you three times already."):
        assert lexicon_toxicity(t) < 0.5 <= toxicity(t), t


def test_swearing_at_no_one_is_not_toxic_but_at_someone_is():
    assert toxicity("Fucking finally, the package is here!") < 0.5
    assert toxicity("Fuck you, the package is late.") >= 0.8


def test_threats_and_hate_come_from_the_lexicon_groups():
    clf = tm._Classifier()
    t = "I'm going to find you and beat you senseless."
    assert max(clf.probs([t])) < 0.5 <= toxicity(t)
    assert toxicity("Refugees are vermin that ruin every town they touch.") >= 0.8
    assert toxicity("I'm going to murder this pizza, I'm starving.") < 0.5  # no victim


@pytest.mark.parametrize("text", ["", " ", "\x00" * 5, "\ud800 you idiot \udfff",
                                  "\U0001F595" * 200, "e\u0301" * 500, "idiot " * 200_000])
def test_bad_input_gives_a_score(text):
    s = toxicity(text)
    assert 0.0 <= s <= 1.0


def test_fallback_to_the_lexicon_when_the_classifier_is_missing(monkeypatch):
    monkeypatch.setitem(sys.modules, "profanity_check", None)
    info = toxicity_engine_info()
    assert info["engine"] == "lexicon" and "alt-profanity-check" in info["reason"]
    assert toxicity("you are an idiot") >= 0.8
    monkeypatch.setenv("SLMFLOW_TOXICITY_ENGINE", "classifier")
    set_toxicity_engine(None)
    with pytest.raises(ToxicityEngineError, match="slmflow\\[evals\\]"):
        toxicity("hello")


def test_classifier_error_marks_the_evaluator_errored_and_the_gateway_uses_the_lexicon(
        monkeypatch):
    eng = tm.toxicity_engine()
    real = eng.probs

    def boom(texts):
        if any("BOOM" in t for t in texts):
            raise ToxicityEngineError("model exploded", where="test")
        return real(texts)

    monkeypatch.setattr(eng, "probs", boom)
    cases = [Case(id=i, input=i) for i in ("a", "b", "c")]
    outs = {"a": "Thanks, that helped.", "b": "BOOM", "c": "You are a moron."}
    rep = run_suite(lambda x: outs[x], cases, [create("toxicity")], record=False)
    by = {r.id: r for r in rep.rows}
    assert by["a"].status == "passed" and by["c"].status == "failed"
    assert by["b"].status == "errored" and "model exploded" in by["b"].error
    _, ds = check_text("BOOM you idiot", GuardPolicy(), "input")
    d = [d for d in ds if d.check == "toxicity"][0]
    assert d.action == "block" and "lexicon used" in d.detail
    with pytest.raises(Exception, match="toxic"):
        Guarded(FunctionModel(lambda m, s: "BOOM I will kill you")).generate_sync("hi")


def test_labelled_sets_are_well_formed():
    for name, n in (("toxicity.jsonl", 180), ("toxicity_heldout.jsonl", 93),
                    ("toxicity_heldout2.jsonl", 50)):
        rows = _rows(name)
        assert len(rows) == n and len({r["id"] for r in rows}) == n
        assert {r["label"] for r in rows} == {"toxic", "ok"}


def test_agreement_with_the_hand_labelled_sets():
    """The word-level classifier beats the lexicon on every set, and the meaning model (MiniLM
    embedding + logistic regression, trained on toxicity.jsonl only) lifts both held-out sets
    past the goal of F1 0.85, where words alone miss implicit insults and hate in neutral words
    (figures in docs/evals.md)."""
    clf = tm._Classifier()
    assert clf.meaning is not None
    for name, floor in (("toxicity.jsonl", 0.8), ("toxicity_heldout.jsonl", 0.75),
                        ("toxicity_heldout2.jsonl", 0.5)):
        rows = _rows(name)
        f_words, f_lex = _f1(rows, clf.word_score), _f1(rows, lexicon_toxicity)
        assert f_words >= floor and f_words > f_lex + 0.05, (name, f_words, f_lex)
    for name in ("toxicity_heldout.jsonl", "toxicity_heldout2.jsonl"):
        rows = _rows(name)
        f_words, f_all = _f1(rows, clf.word_score), _f1(rows, clf.score)
        assert f_all >= 0.85 and f_all > f_words + 0.1, (name, f_all, f_words)


def test_the_meaning_model_reads_an_insult_in_neutral_words():
    clf = tm._Classifier()
    t = "Maybe get a grown-up to read my ticket, since you clearly can't."  # held-out 2
    assert clf.word_score(t) < 0.5 <= clf.score(t)
    assert clf.score("Could you resend the confirmation link? It expired.") < 0.5


def test_the_meaning_model_can_be_off_and_a_broken_file_says_why(monkeypatch, tmp_path):
    monkeypatch.setenv("SLMFLOW_TOXICITY_MEANING", "off")
    clf = tm._Classifier()
    t = "Maybe get a grown-up to read my ticket, since you clearly can't."
    assert clf.meaning is None and clf.score(t) == clf.word_score(t)
    monkeypatch.delenv("SLMFLOW_TOXICITY_MEANING")
    bad = tmp_path / "toxicity_meaning.json"
    bad.write_text("{not json")
    monkeypatch.setattr(tm._Meaning, "FILE", bad)
    clf = tm._Classifier()
    with pytest.warns(RuntimeWarning, match="meaning model is off"):
        assert clf.meaning is None
    assert "meaning" not in clf.description
    assert 0.0 <= clf.score(t) <= 1.0


def test_short_everyday_messages_are_not_toxic():
    """A meaning model trained on the tuning set alone called "Say hi" 0.76 and "hello" 0.57
    toxic (its toxic texts are the short ones) and the gateway refused a replica test's "Say hi
    3". Texts under `MIN_WORDS` words are scored on words, and real benign messages (BANKING77's
    test split, never trained on) stay under 0.5 but for a handful."""
    import csv

    clf = tm._Classifier()
    for t in ("Say hi", "Say hi 3", "hello", "ok", "thanks!", "Tell me a joke", "ping"):
        assert clf.score(t) < 0.5, t
    path = Path(__file__).resolve().parents[1] / "data" / "banking77" / "test.csv"
    with path.open(newline="") as f:
        texts = [r["text"] for r in csv.DictReader(f)][:600]
    flagged = [t for t in texts if clf.score(t) >= 0.5]
    assert len(flagged) <= 3, flagged


def test_the_gateway_guard_blocks_on_words_and_the_evaluator_reads_meaning(monkeypatch):
    """A guard refuses the request, so it blocks on words (`word_toxicity`); the evaluator,
    whose false flag costs a review, uses the meaning model too."""
    from slmflow.guardrails import word_toxicity

    class Always:
        def prob(self, text):
            return 0.99

    eng = tm.toxicity_engine()
    monkeypatch.setattr(eng, "_meaning", Always())
    text = "Could you please tell me a fun fact about octopuses?"
    assert toxicity(text) >= 0.9 and word_toxicity(text) < 0.5
    _, ds = check_text(text, GuardPolicy(), "input")
    assert [d.action for d in ds if d.check == "toxicity"] == ["pass"]
    rep = run_suite(lambda x: text, [Case(id="a", input="a")], [create("toxicity")],
                    record=False)
    assert rep.rows[0].status == "failed"


def test_the_guard_path_never_loads_the_meaning_model():
    """`word_toxicity` (the gateway guard's scorer) leaves the meaning model unloaded: no torch
    and MiniLM in a gateway process that blocks on words."""
    from slmflow.guardrails import word_toxicity

    word_toxicity("Could you please tell me a fun fact about octopuses?")
    assert tm.toxicity_engine()._meaning is tm._UNLOADED
    toxicity("Could you please tell me a fun fact about octopuses?")
    assert tm.toxicity_engine()._meaning is not tm._UNLOADED
