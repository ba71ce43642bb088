"""The support example's generated training data keeps its promises: held-out scenarios are never
training inputs, every generated reply states only facts its policy passage states, the verifier
data is balanced with every fault kind, and the scenario suite has the size and parts the
example claims. No model runs here (the data files are committed; the generator is checked by
re-running its pure parts)."""

from __future__ import annotations

import json
import random
import re
import sys
from pathlib import Path

import pytest
import yaml

SUPPORT = Path(__file__).resolve().parents[1] / "examples" / "support"
DATA = SUPPORT / "data"


def _rows(name: str) -> list[dict]:
    return [json.loads(ln) for ln in (DATA / name).read_text().splitlines() if ln.strip()]


def _norm(t: str) -> str:
    return " ".join(t.lower().split())


@pytest.fixture(scope="module")
def gen():
    sys.path.insert(0, str(DATA))
    sys.path.insert(0, str(SUPPORT))
    import make_pipeline_data

    return make_pipeline_data


def test_scenario_suite_has_a_development_and_a_held_out_part():
    dev = yaml.safe_load((SUPPORT / "scenarios.yaml").read_text())["scenarios"]
    held = yaml.safe_load((SUPPORT / "scenarios_heldout.yaml").read_text())["scenarios"]
    assert len(dev) + len(held) >= 40
    assert len(held) >= 20
    held2 = yaml.safe_load((SUPPORT / "scenarios_heldout2.yaml").read_text())["scenarios"]
    assert len(held2) >= 20
    ids = [s["id"] for s in dev + held + held2]
    assert len(ids) == len(set(ids)), "scenario ids repeat"
    # the bad-input cases the issue names are scenarios
    texts = [s["input"]["text"] for s in dev + held]
    assert "" in texts  # empty ticket
    assert any(len(t) >= 1900 for t in texts)  # noise
    assert any("Ignore all previous instructions" in t for t in texts)


def test_no_training_script_input_is_a_scenario_ticket():
    scen = set()
    for f in ("scenarios.yaml", "scenarios_heldout.yaml", "scenarios_heldout2.yaml"):
        for s in yaml.safe_load((SUPPORT / f).read_text())["scenarios"]:
            scen.add(_norm(s["input"]["text"]))
    scen |= {_norm(t) for t in (SUPPORT / "tickets.txt").read_text().splitlines() if t.strip()}
    for f in sorted(DATA.glob("*_train.jsonl")) + sorted(DATA.glob("*_eval.jsonl")):
        leaked = [r["input"]["text"] for r in _rows(f.name) if _norm(r["input"]["text"]) in scen]
        assert not leaked, f"{f.name} has scenario tickets as inputs: {leaked[:3]}"


def test_the_held_out_scenarios_are_not_read_by_the_generators():
    for f in ("make_pipeline_data.py", "make_training_data.py"):
        assert "scenarios_heldout" not in (DATA / f).read_text().replace(
            "(scenarios_heldout.yaml) is not read here", "")


def _numbers(text: str) -> set[str]:
    return set(re.findall(r"\d+(?:-\d+)?", text))


def test_every_policy_sentence_states_only_its_passages_numbers(gen):
    """A reply template that changed a deadline would teach the reasoner a wrong policy."""
    for it in gen.INTENTS:
        if it.kb is None:
            continue
        kb = (SUPPORT / "kb" / f"{it.kb}.md").read_text()
        for p in it.policy:
            extra = _numbers(p) - _numbers(kb)
            assert not extra, f"{it.name}: numbers {extra} are not in kb/{it.kb}.md"


def test_reasoner_targets_name_a_retrieved_passage_and_the_ids(gen):
    rows = _rows("reasoner_train.jsonl")
    assert len(rows) >= 300
    named = 0
    for r in rows:
        inp, tgt = r["input"], r["target"]
        ids = [p["id"] for p in inp["passages"]]
        assert tgt["policy"] == "none" or tgt["policy"] in ids
        named += tgt["policy"] != "none"
        if tgt["draft"] == gen.REFERRAL:
            assert inp["category"] == "other"
            continue
        for k in ("order_id", "account_id"):
            if inp.get(k) and (inp.get("lookup") or {}).get(k) == inp[k]:
                assert inp[k] in tgt["draft"], (k, tgt["draft"])
        if inp.get("lookup"):
            for k in ("delivered_on", "shipped_on", "ordered_on"):
                if k in inp["lookup"]:
                    assert inp["lookup"][k] in tgt["draft"]
    # retrieval finds the intent's passage for most rows (the rest: the reasoner still answers)
    assert named / len(rows) > 0.7


def test_verifier_data_is_balanced_with_every_fault_kind():
    rows = _rows("verifier_train.jsonl")
    ok = sum(r["target"]["approved"] for r in rows)
    assert 0.4 < ok / len(rows) < 0.6
    kinds = {r["target"]["reason"] for r in rows if not r["target"]["approved"]}
    assert kinds == {"wrong_id", "wrong_fact", "unsupported_promise", "off_topic", "incomplete"}
    assert all(r["target"]["approved"] == (r["target"]["reason"] == "ok") for r in rows)


def test_corruptions_change_what_they_claim(gen):
    rng = random.Random(0)
    it = next(i for i in gen.INTENTS if i.name == "damaged")
    t = gen.Ticket("Order A-1042 arrived broken", it, "A-1042", None, "mug")
    good = f"Order A-1042 (mug) was delivered on 2026-11-18. {it.policy[0]}"
    wrong_id = gen.corrupt("wrong_id", good, t, "", rng)
    assert "A-1042" not in wrong_id and re.search(r"[A-Z]{1,2}-\d+", wrong_id)
    fact = gen.corrupt("wrong_fact", good, t, "", rng)
    assert fact != good and _numbers(fact) != _numbers(good) or "50%" in fact
    promise = gen.corrupt("unsupported_promise", good, t, "", rng)
    assert any(p in promise for p in gen.PROMISES)


def test_every_extracted_id_is_a_candidate_the_constraint_offers(gen):
    """The extractor decodes under `Fields.constraint_for`: an id must be one of the ticket's
    id-shaped strings. Every training and eval target must stay reachable under it."""
    from support_schemas import Fields, Ticket

    for name in ("extraction_train", "extraction_eval"):
        for r in _rows(name + ".jsonl"):
            text = r["input"]["text"] if isinstance(r["input"], dict) else r["input"]
            c = Fields.constraint_for(Ticket(text=text))["properties"]
            for key in ("order_id", "account_id"):
                assert r["target"][key] in c[key]["enum"], (name, text, key)


def test_id_candidates_are_the_id_shaped_strings_of_the_ticket(gen):
    from support_schemas import Fields, Ticket, id_candidates

    assert id_candidates("Order a-1042 and B-77, account 12345678, not 123 or 2026-11-18") == (
        ["A-1042", "B-77"], ["12345678"])
    c = Fields.constraint_for(Ticket(text="My order #1042 is late"))["properties"]
    assert c["order_id"]["enum"] == [None] and c["account_id"]["enum"] == ["1042", None]


def test_every_reasoner_note_is_one_the_constraint_allows(gen):
    """`record_note_constraint` forces the record note where the ticket gave the id: every
    training and eval target's note must be the one it forces (or one of the two it allows)."""
    from support_schemas import DraftInput, record_note_constraint

    for name in ("reasoner_train", "reasoner_eval"):
        for r in _rows(name + ".jsonl"):
            c = record_note_constraint(DraftInput.model_validate(r["input"]))
            note = r["target"]["record"]
            if "const" in c:
                assert note == c["const"], (name, r["input"]["text"])
            elif "enum" in c:
                assert note in c["enum"], (name, r["input"]["text"])
