"""The llama.cpp token loop (models/llamacpp_engine.py) on the real embedded model: a reused
prefix gives the logits a fresh evaluation gives, states of different adapters never mix, the
cache stays inside its byte bound, concurrent requests stay correct, constrained decoding
fast-forwards forced tokens and stays valid."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Literal

import numpy as np
import pytest
from pydantic import BaseModel

from slmflow.models.catalog import resolve
from slmflow.models.llamacpp_engine import PrefixCache, closed_objects
from slmflow.types import Message, Settings

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]
ROUTER = ROOT / "examples" / "support" / "adapters" / "router" / "adapter.gguf"
EXTRACTOR = ROOT / "examples" / "support" / "adapters" / "extractor" / "adapter.gguf"

SYSTEM = ("You are a customer-support agent. Answer the customer in 2 short sentences, using "
          "only the policy. Mention the order or account id if there is one.")


class Route(BaseModel):
    category: Literal["refund", "shipping", "billing", "account", "other"]


def _model(**kw):
    kw.setdefault("prefix_cache", True)
    return resolve("smollm2-135m", **kw).load()


def _tokens(m, text: str) -> np.ndarray:
    llm = m._llamas[0]
    return np.asarray(llm.tokenize(text.encode(), add_bos=True, special=True), dtype=np.int32)


def _fresh_logits(m, tokens: np.ndarray) -> np.ndarray:
    """The last logits row of `tokens` evaluated from an empty context, nothing reused."""
    sess = m._session(m._llamas[0])
    cache, sess.cache = sess.cache, None
    try:
        sess._truncate(0)
        return sess.prefill(tokens)[0]
    finally:
        sess.cache = cache


def test_reused_prefix_gives_the_logits_of_a_fresh_evaluation():
    m = _model(prefix_cache=True)
    m_cache = PrefixCache(64 << 20)
    sess = m._session(m._llamas[0])
    sess.cache = m_cache
    a = _tokens(m, m.prompt_text([Message("system", SYSTEM),
                                  Message("user", "Ticket: my order A-1042 arrived broken")]))
    b = _tokens(m, m.prompt_text([Message("system", SYSTEM),
                                  Message("user", "Ticket: where is my parcel B-77?")]))
    sess._truncate(0)
    sess.prefill(a)
    sess.save()
    assert len(m_cache) == 1
    # the live context is moved elsewhere, so b can only come from the cache
    sess._truncate(0)
    sess.prefill(_tokens(m, "An unrelated text that shares only the start token."))
    logits_b, reused = sess.prefill(b)
    shared = int(np.flatnonzero(a[:len(b)] != b[:len(a)])[0])
    assert reused == shared > 20  # the system prompt and the template came from the cache
    fresh = _fresh_logits(m, b)
    # bit-identical: the suffix is evaluated with the same kernels as in a fresh evaluation
    np.testing.assert_array_equal(logits_b, fresh)


def test_whole_answers_are_the_same_with_and_without_the_cache():
    prompts = [[Message("system", SYSTEM), Message("user", f"Ticket: {t}")] for t in (
        "My order A-1042 arrived broken, I want a refund",
        "I was charged twice for my subscription this month, account 88231.",
        "My order A-1042 arrived broken, I want a refund")]

    async def answers(cache: bool):
        m = _model(prefix_cache=cache)
        out = []
        for p in prompts:
            if not cache:  # a fresh evaluation every time: nothing in the context either
                m._session(m._llamas[0])._truncate(0)
            r = await m.generate(p, settings=Settings(max_tokens=24))
            out.append((r.text, r.usage.cached_input_tokens, r.confidence))
        await m.aclose()
        return out

    with_cache = asyncio.run(answers(True))
    without = asyncio.run(answers(False))
    assert [t for t, _, _ in with_cache] == [t for t, _, _ in without]
    assert [c for _, _, c in with_cache] == [c for _, _, c in without]
    assert all(n == 0 for _, n, _ in without)
    assert with_cache[1][1] > 20 and with_cache[2][1] > with_cache[1][1]


def test_states_of_different_adapters_never_mix():
    """Three models on one base share its contexts (one copy of the weights); each call binds its
    own adapter, and a KV state made under one adapter is never offered to another."""
    cache = PrefixCache(64 << 20)
    text = [Message("system", "Classify the ticket."), Message("user", "Ticket: refund please")]
    router = resolve("smollm2-135m", lora_path=ROUTER, prefix_cache=True).load()
    extractor = resolve("smollm2-135m", lora_path=EXTRACTOR, prefix_cache=True).load()
    base = _model()
    assert router._llamas[0] is extractor._llamas[0] is base._llamas[0]  # one weight copy
    toks = _tokens(base, base.prompt_text(text))
    logits, scopes = [], []
    for m in (router, extractor, base):
        s = m._session(m._llamas[0])
        s.cache = cache
        s._truncate(0)
        row, reused = s.prefill(toks)
        s.save()
        assert reused == 0  # a state made under another adapter is never offered
        logits.append(row)
        scopes.append(s.scope)
    assert len(set(scopes)) == 3 and len(cache) == 3
    # the adapters do change the states: the rows differ
    assert not np.allclose(logits[0], logits[1], atol=1e-2)
    assert not np.allclose(logits[0], logits[2], atol=1e-2)
    # the same adapter reuses its own state, and gets the same logits as its first evaluation
    s = router._session(router._llamas[0])
    s.cache = cache
    row, reused = s.prefill(toks)
    assert reused == len(toks) - 2  # two tokens are always evaluated (see prefill)
    np.testing.assert_array_equal(row, logits[0])


def test_a_shared_base_gives_each_adapter_the_answer_of_its_own_model():
    """Sharing the base's context must not change what an adapter answers: the same prompt on a
    model loaded alone with its adapter (legacy engine: llama-cpp-python's own lora_path) and on
    the shared base with the adapter bound per call give the same greedy answer."""
    msgs = [Message("system", "Classify the ticket."), Message("user", "Ticket: my parcel is lost")]
    alone = resolve("smollm2-135m", lora_path=ROUTER, engine="legacy").load()
    shared = resolve("smollm2-135m", lora_path=ROUTER).load()
    base = _model()
    a = asyncio.run(alone.generate(msgs, settings=Settings(max_tokens=12)))
    b = asyncio.run(shared.generate(msgs, settings=Settings(max_tokens=12)))
    asyncio.run(base.generate(msgs, settings=Settings(max_tokens=12)))  # binds the bare base
    c = asyncio.run(shared.generate(msgs, settings=Settings(max_tokens=12)))  # and back
    assert a.text == b.text == c.text


def test_cache_evicts_within_its_byte_bound():
    m = _model()
    sess = m._session(m._llamas[0])
    cache = PrefixCache(0)
    sess.cache = cache
    sess._truncate(0)
    sess.prefill(_tokens(m, "one two three four five six seven eight nine ten " * 4))
    size_one = __import__("llama_cpp").llama_state_seq_get_size(sess.ctx, 0)
    cache.max_bytes = int(size_one * 2.5)
    for i in range(6):
        sess._truncate(0)
        sess.prefill(_tokens(m, f"{i} distinct prompt number {i} " * 8))
        sess.save()
        assert cache.nbytes <= cache.max_bytes
    assert cache.evictions >= 3
    assert 1 <= len(cache) <= 2


def test_a_prefix_entry_is_replaced_by_the_longer_one_that_contains_it():
    cache = PrefixCache(1 << 30)
    scope = ("s",)
    cache.put(scope, np.arange(10, dtype=np.int32), object(), 100)
    cache.put(scope, np.arange(20, dtype=np.int32), object(), 200)
    cache.put(("other",), np.arange(10, dtype=np.int32), object(), 100)
    assert len(cache) == 2 and cache.nbytes == 300
    entry, n = cache.lookup(scope, np.r_[np.arange(15), [99]].astype(np.int32))
    assert n == 15 and len(entry.tokens) == 20


def test_concurrent_requests_on_a_pool_share_the_cache_and_stay_correct():
    tickets = ["My order A-1042 arrived broken", "Where is order B-77?",
               "I was charged twice, account 88231", "How do I change my email?"] * 2

    async def run(m):
        return await asyncio.gather(*(m.generate(
            [Message("system", "Classify the ticket."), Message("user", f"Ticket: {t}")],
            schema=Route, settings=Settings(max_tokens=16)) for t in tickets))

    pooled = resolve("smollm2-135m", pool_size=2, prefix_cache=True).load()
    serial = resolve("smollm2-135m", prefix_cache=False).load()
    together = asyncio.run(run(pooled))
    one_by_one = [asyncio.run(serial.generate(
        [Message("system", "Classify the ticket."), Message("user", f"Ticket: {t}")],
        schema=Route, settings=Settings(max_tokens=16))) for t in tickets]
    assert [r.parsed for r in together] == [r.parsed for r in one_by_one]
    assert sum(r.usage.cached_input_tokens for r in together) > 0


def test_constrained_decoding_fast_forwards_and_stops_when_complete():
    m = _model()
    msgs = [Message("system", "Classify the ticket."), Message("user", "Ticket: refund please")]
    from slmflow.models.llamacpp_engine import lltokenizer, new_matcher
    from slmflow.structured import OutputSpec

    spec = OutputSpec.build(Route)
    llm = m._llamas[0]
    matcher = new_matcher(lltokenizer(m.path), spec.schema_text)
    sess = m._session(llm)
    res = sess.run(_tokens(m, m.prompt_text(spec.with_instruction(msgs))), matcher=matcher,
                   max_tokens=32)
    text = llm.detokenize(res.tokens).decode()
    Route.model_validate_json(text)
    assert res.finish == "stop"
    assert res.forced_tokens >= 3  # {"category":" at least
    assert len(res.logprobs) == len(res.tokens)  # forced tokens carry their raw probability
    assert matcher.is_stopped()


def test_unscored_forced_tokens_give_the_same_answer_without_evaluating_the_forced_tail():
    """score_forced=False (the reference reasoner's quoted reply): the same tokens under greedy
    decoding, log-probabilities for the chosen tokens only, and a forced tail that ends the answer
    is not evaluated (the context holds fewer tokens than the scored run's)."""
    m = _model(prefix_cache=False)
    from slmflow.models.llamacpp_engine import lltokenizer, new_matcher

    schema = json.dumps({"type": "object", "properties": {
        "category": {"enum": ["refund", "shipping"]},
        "reply": {"const": "We refund broken items in full, including the shipping costs."}},
        "required": ["category", "reply"], "additionalProperties": False})
    msgs = [Message("system", "Classify the ticket, then reply."),
            Message("user", "Ticket: my mug arrived broken, I want my money back")]
    llm = m._llamas[0]
    prompt = _tokens(m, m.prompt_text(msgs))
    runs = {}
    for scored in (True, False):
        sess = m._session(llm)
        sess._truncate(0)
        res = sess.run(prompt, matcher=new_matcher(lltokenizer(m.path), schema), max_tokens=64,
                       score_forced=scored)
        runs[scored] = (res, len(sess.tokens))
    (a, held_a), (b, held_b) = runs[True], runs[False]
    assert a.tokens == b.tokens and a.finish == b.finish == "stop"
    json.loads(llm.detokenize(b.tokens).decode())
    assert len(a.logprobs) == len(a.tokens)
    assert len(b.logprobs) == len(b.tokens) - b.forced_tokens >= 1
    assert held_b < held_a  # the forced reply was evaluated only when it was scored
    # each chosen token's log-probability is one of the scored run's
    assert all(any(abs(lp - x) < 1e-4 for x in a.logprobs) for lp in b.logprobs)


def test_one_decode_per_chosen_token():
    """The forced start of the answer is evaluated in the prompt's batch, and a chosen token in
    one batch with the forced tokens after it: a constrained call costs one llama_decode per
    token the model chose (the last choice's forced tail, unscored, costs none). Before, each
    forced run and each chosen token was a decode of its own (router: 3, extractor: 5)."""
    m = _model(prefix_cache=False)
    from slmflow.models.llamacpp_engine import lltokenizer, new_matcher

    schema = json.dumps({"type": "object", "properties": {
        "urgent": {"type": "boolean"},
        "category": {"enum": ["refund", "shipping"]},
        "reply": {"const": "We refund broken items in full, including the shipping costs."}},
        "required": ["urgent", "category", "reply"], "additionalProperties": False})
    msgs = [Message("system", "Classify the ticket, then reply."),
            Message("user", "Ticket: my mug arrived broken, I want my money back")]
    llm = m._llamas[0]
    prompt = _tokens(m, m.prompt_text(msgs))
    sess = m._session(llm)
    sess._truncate(0)
    batches: list[int] = []
    decode = sess._decode

    def counting(toks, all_logits, *rest, **kw):
        batches.append(len(toks))
        return decode(toks, all_logits, *rest, **kw)

    sess._decode = counting
    try:
        res = sess.run(prompt, matcher=new_matcher(lltokenizer(m.path), schema), max_tokens=64,
                       score_forced=False)
    finally:
        del sess._decode
    out = json.loads(llm.detokenize(res.tokens).decode())
    assert out["category"] in ("refund", "shipping") and isinstance(out["urgent"], bool)
    chosen = len(res.tokens) - res.forced_tokens
    assert chosen >= 2 and len(batches) == chosen
    assert batches[0] > len(prompt)  # {"urgent": rode in the prompt's batch
    assert batches[1] > 1  # the chosen boolean with ,"category":" after it


def test_an_agent_that_does_not_score_forced_tokens_passes_it_to_the_model():
    from slmflow.agents import Agent
    from slmflow.models.base import WrapperModel

    seen = []

    class Spy(WrapperModel):
        async def generate(self, messages, *, schema=None, tools=None, settings=None):
            r = await self.wrapped.generate(messages, schema=schema, tools=tools,
                                            settings=settings)
            seen.append((settings, r))
            return r

    a = Agent("cls", Spy(_model()), instructions="Classify the ticket.", output_type=Route,
              max_tokens=16, score_forced=False)
    r = a.run_sync("refund please")
    assert r.output.category in ("refund", "shipping", "billing", "account", "other")
    settings, resp = seen[-1]
    assert settings.score_forced is False
    assert resp.token_logprobs and len(resp.token_logprobs) < resp.usage.output_tokens


def test_closed_objects_require_every_key_in_order():
    s = closed_objects({"type": "object", "properties": {"b": {}, "a": {}, "c": {}},
                        "required": ["c"]})
    assert s["required"] == ["c", "b", "a"] == list(s["properties"])


def test_optional_fields_are_written_so_a_later_key_is_not_lost():
    """Regression: with optional keys skippable, the extractor adapter wrote `urgent` first and
    llguidance (which keeps key order) closed the object: the order id was lost."""
    import sys

    sys.path.insert(0, str(ROOT / "examples" / "support"))
    from support_schemas import Fields

    m = resolve("smollm2-135m", lora_path=EXTRACTOR, prefix_cache=False).load()
    from slmflow.finetune.registry import SettingsOverride

    model = SettingsOverride(m, schema_hint=False)
    msgs = [Message("system", "Extract fields from the ticket. order_id looks like A-1042 "
                    "(letter, dash, digits). account_id is only digits. Use null when the "
                    "ticket does not contain it. urgent is true only when the customer says it "
                    "is urgent."), Message("user", "Ticket: My order A-1042 arrived broken")]
    r = asyncio.run(model.generate(msgs, schema=Fields, settings=Settings(max_tokens=48)))
    assert r.parsed.order_id == "A-1042"
    assert list(json.loads(r.text)) == ["urgent", "order_id", "account_id"]


def test_closed_objects_forbids_extra_keys_but_keeps_free_dicts():
    s = closed_objects({"type": "object", "properties": {"a": {"type": "object"},
                                                          "b": {"properties": {"c": {}}}}})
    assert s["additionalProperties"] is False
    assert "additionalProperties" not in s["properties"]["a"]
    assert s["properties"]["b"]["additionalProperties"] is False
    assert closed_objects({"properties": {}, "additionalProperties": True})[
        "additionalProperties"] is True
    assert json.dumps(closed_objects({"enum": [{"properties": 1}]})) == '{"enum": [{"properties": 1}]}'


def test_legacy_engine_stays_selectable():
    m = resolve("smollm2-135m", engine="legacy").load()
    r = asyncio.run(m.generate([Message("user", "Say hi")], schema=Route,
                               settings=Settings(max_tokens=16)))
    assert isinstance(r.parsed, Route)
    from slmflow.errors import ConfigError

    with pytest.raises(ConfigError, match="engine must be"):
        resolve("smollm2-135m", engine="warp")


def test_the_grammar_tokenizer_outlives_a_closed_model():
    """llguidance calls llama_tokenize through the vocab it was built on: built on a context's
    own model, it crashed the process once that model was closed and freed."""
    import gc

    async def once():
        m = resolve("smollm2-135m", prefix_cache=False).load()
        r = await m.generate([Message("user", "refund please")], schema=Route,
                             settings=Settings(max_tokens=16))
        await m.aclose()
        return r.parsed

    assert isinstance(asyncio.run(once()), Route)
    gc.collect()
    assert isinstance(asyncio.run(once()), Route)


def test_weight_formats_are_made_once_and_unknown_ones_refused(tmp_path, monkeypatch):
    from slmflow.errors import ConfigError
    from slmflow.models.llamacpp import gguf_in_format

    monkeypatch.setenv("SLMFLOW_HOME", str(tmp_path))
    src = resolve("smollm2-135m", weights="as-shipped").path
    assert gguf_in_format(src, "q4_1") == src  # the shipped format: the file itself
    q8 = gguf_in_format(src, "q8_0")
    assert q8.parent == tmp_path / "models" and q8.stat().st_size > src.stat().st_size
    mtime = q8.stat().st_mtime_ns
    assert gguf_in_format(src, "q8_0") == q8 and q8.stat().st_mtime_ns == mtime  # reused
    m = resolve("smollm2-135m", weights="q8_0")
    assert m.source_path == src and m.weights == "q8_0"
    with pytest.raises(ConfigError, match="unknown weight format"):
        gguf_in_format(src, "q3_weird")


class Said(BaseModel):
    reply: str


def test_a_constraint_narrows_what_the_real_model_may_answer():
    """`Settings.constraint` steers llguidance on the embedded model: the reply is one of the two
    quoted sentences (a narrower schema than `Said`), forced tokens fast-forwarded, and the
    answer still validates against `Said`. Without the constraint the same call writes its own
    text. A constraint llguidance cannot compile is a SchemaError, the model still usable."""
    from slmflow.errors import SchemaError

    m = _model()
    msgs = [Message("system", SYSTEM),
            Message("user", "My order A-1042 arrived broken, I want a refund.")]
    options = ["We refund it in full, including shipping.",
               "Use Forgot password on the sign-in page."]
    pattern = "^(" + "|".join(o.replace(".", "\\.") for o in options) + ")$"
    narrow = json.dumps({"type": "object", "properties": {
        "reply": {"type": "string", "pattern": pattern}}, "required": ["reply"]})
    s = Settings(max_tokens=48, constraint=narrow)
    r = asyncio.run(m.generate(msgs, schema=Said, settings=s))
    assert r.parsed.reply in options
    free = asyncio.run(m.generate(msgs, schema=Said, settings=Settings(max_tokens=48)))
    assert free.parsed.reply not in options
    bad = Settings(max_tokens=8, constraint=json.dumps({"type": "object", "properties": {
        "reply": {"type": "string", "pattern": "(unclosed"}}}))
    with pytest.raises(SchemaError):
        asyncio.run(m.generate(msgs, schema=Said, settings=bad))
    again = asyncio.run(m.generate(msgs, schema=Said, settings=s))
    assert again.parsed.reply == r.parsed.reply
