"""The llama.cpp token loop: prefix reuse across calls, constrained decoding with fast-forward.

Why slmflow drives llama.cpp's context itself instead of ``Llama.generate``: in a chain of small
agents the cost is prompt evaluation, not decoding (a 135M model prefills ~190 tokens/s on one
portable-build thread, so a 330-token verifier prompt is ~1.7 s for 6 output tokens), and most
of those tokens were evaluated before: an agent's instructions and schema text are the same in
every call, and the verifier reads the passages and ticket the reasoner read a moment earlier.
``Llama.generate`` only reuses the prefix of the *last* prompt of *its own* context. Here:

* `PrefixCache` (llamacpp_prefix.py) keeps KV states of earlier prompts
  (``llama_state_seq_get_data`` of sequence 0: only the KV cells of that sequence, ~23 KB per
  token for SmolLM2-135M; ``Llama.save_state`` is the wrong tool, it copies the whole context
  state with its logits buffer). A call finds the entry with the longest common token prefix,
  restores it (~1 ms for 300 tokens) and drops the cells past the match, so it evaluates only
  what no earlier call evaluated: RadixAttention's idea over opaque state blobs. The live
  context is itself a candidate (no restore needed). Entries are scoped by model file, adapter
  file and context type, and memory is bounded (see llamacpp_prefix).
* Constrained decoding runs on llguidance (`LLMatcher` over the llama.cpp vocabulary, the
  tokenizer bridge ``llguidance.llamacpp``): tokens the grammar forces (``{"category":"``) are
  decoded in one batch instead of one by one (fast-forward); the unconstrained argmax is checked
  first and the ~50 us mask is computed only when the grammar rejects it; generation stops as
  soon as the grammar is complete (no decode of a closing EOS). Batches are joined: the forced
  start of the answer rides in the prompt's batch, and a chosen token in one batch with the
  forced tokens after it, so a call is one ``llama_decode`` per token the model chose (each
  decode has a fixed cost of ~10 ms here whatever its length up to a few tokens: the reference
  router went from three decodes to one, 105 -> 73 ms p50). llama.cpp's GBNF sampler, which
  checks every vocabulary entry per token, stays behind ``engine="legacy"``.
* Confidence stays what it was by default: the mean log-probability of every emitted token under
  the raw (unconstrained) distribution, forced tokens included. A forced batch asks llama.cpp for
  one logits row per forced token (one output-projection row each, no extra decode), so a forced
  token the model would not have chosen still lowers confidence. With ``score_forced=False``
  (`Settings.score_forced`) confidence covers only the tokens the model chose (where the grammar
  allowed more than one): a forced batch then asks for its last row only, and a forced batch
  that ends the answer is not evaluated at all (nothing after it needs its KV cells). That is
  the lever for outputs whose tail code writes (the reference reasoner's quoted reply: ~60
  forced tokens, ~200 ms of evaluation whose only product was their probability).

Threads: prefill is compute-bound and scales with cores; the decode of one token is short and
suffers most when another process holds a core. `n_threads_batch` and `n_threads` are set per
phase by the caller (see `default_threads` in llamacpp_pool.py).

One `LlamaSession` drives one llama.cpp context and is used by one thread at a time (the
model's context pool guarantees it); the `PrefixCache` is shared by every context of the
process and locks its own table.

One job: this module is the token loop (`LlamaSession`) and what it needs to constrain tokens
(llguidance's view of the vocabulary and the grammar of a schema, each built once and cached,
and `before_stop`, the stop-string rule). The store of KV states it reuses is llamacpp_prefix;
streaming the loop to an event loop is llamacpp_stream; choosing and pooling contexts is
llamacpp_pool.
"""

from __future__ import annotations

import ctypes
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from .llamacpp_prefix import PrefixCache, _common_prefix, file_scope, shared_cache

__all__ = ["LlamaSession", "LoopResult", "PrefixCache", "before_stop", "closed_objects",
           "file_scope", "grammar_for", "lltokenizer", "new_matcher", "shared_cache"]


# -- llguidance ------------------------------------------------------------------------------
_LLTOK: dict[str, tuple[Any, Any]] = {}
_LLTOK_LOCK = threading.Lock()


def lltokenizer(model_path: str | Path) -> Any:
    """llguidance's view of a model's vocabulary (built once per model file: ~1 s).

    llguidance keeps llama.cpp's vocab pointer and calls ``llama_tokenize`` through it for as
    long as the tokenizer lives, so the vocab must outlive every context that is closed or
    garbage-collected (a tokenizer built on a context's own model segfaulted the next call once
    that model was freed). It therefore comes from a vocab-only load of the file (no weights,
    a few MB) that this cache owns for the life of the process."""
    key = str(Path(model_path).resolve())
    with _LLTOK_LOCK:
        hit = _LLTOK.get(key)
        if hit is None:
            import warnings

            import llama_cpp
            from llguidance.llamacpp import lltokenizer_from_vocab

            from .llamacpp_pool import _quiet_stderr

            with _quiet_stderr():
                holder = llama_cpp.Llama(model_path=key, vocab_only=True, verbose=False,
                                         n_ctx=64)
            with warnings.catch_warnings():  # it calls a deprecated alias once per token
                warnings.simplefilter("ignore", DeprecationWarning)
                tok = lltokenizer_from_vocab(holder._model.vocab)
            hit = _LLTOK[key] = (tok, holder)
        return hit[0]


_GRAMMARS: OrderedDict[str, str] = OrderedDict()


def closed_objects(schema: Any) -> Any:
    """A copy of `schema` where every object with ``properties`` gets
    ``additionalProperties: false`` (unless it says otherwise) and lists every property as
    required: the required ones first, then the others, each group in the schema's order (the
    order llama.cpp's GBNF converter wrote them in, which the shipped adapters learned).

    Closed: JSON Schema allows extra keys by default and llguidance follows the spec, so a
    pydantic model's schema let a small model append ``,"description":...`` until max_tokens
    (seen here); llama.cpp's GBNF converter closed such objects too. All keys, in order: an
    optional key may otherwise be skipped, and llguidance keeps the schema's key order, so a
    model that wrote the last key first closed the object without the others (the extractor
    answered ``{"urgent":false}`` and lost the order id). Writing every key, null where there
    is nothing, is also how slmflow renders training targets, so adapters see their own format;
    and every key being forced, the whole key text is fast-forwarded. The answer still
    validates against the original schema."""
    if isinstance(schema, list):
        return [closed_objects(v) for v in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: (closed_objects(v) if k not in ("const", "enum", "default", "examples") else v)
           for k, v in schema.items()}
    if isinstance(out.get("properties"), dict):
        if "additionalProperties" not in out and "patternProperties" not in out:
            out["additionalProperties"] = False
        props, req = out["properties"], set(out.get("required") or ())
        order = [k for k in props if k in req] + [k for k in props if k not in req]
        out["properties"] = {k: props[k] for k in order}
        out["required"] = order
    return out


def grammar_for(schema_text: str) -> str:
    """llguidance grammar of a JSON schema: objects closed (`closed_objects`), compact JSON (no
    free whitespace between tokens, so structure is forced and fast-forwarded), cached by
    schema text."""
    g = _GRAMMARS.get(schema_text)
    if g is None:
        import json

        import llguidance

        closed = json.dumps(closed_objects(json.loads(schema_text)))
        g = llguidance.LLMatcher.grammar_from_json_schema(
            closed, defaults={"whitespace_flexible": False})
        _GRAMMARS[schema_text] = g
        while len(_GRAMMARS) > 256:
            _GRAMMARS.popitem(last=False)
    return g


def new_matcher(lltok: Any, schema_text: str) -> Any:
    import llguidance

    from ..errors import SchemaError

    m = llguidance.LLMatcher(lltok, grammar_for(schema_text))
    if m.is_error():
        raise SchemaError(f"llguidance rejected the schema: {m.get_error()}", where="llamacpp")
    return m


# -- the token loop --------------------------------------------------------------------------
@dataclass
class LoopResult:
    tokens: list[int]
    logprobs: list[float]
    finish: str
    prompt_tokens: int
    reused_tokens: int
    forced_tokens: int = 0
    masked_steps: int = 0
    ttft_s: float | None = None
    text: str | None = None  # set when a stop string cut the text
    timings: dict[str, float] = field(default_factory=dict)


def before_stop(text: str, stop: Sequence[str]) -> str | None:
    """`text` up to the earliest stop string in it; None when it holds none. The one rule for
    stop strings: both engines' loops and the stream's deltas cut with it."""
    hits = [text.index(s) for s in stop if s in text]
    return text[:min(hits)] if hits else None


def _logprob(row: np.ndarray, tok: int) -> float:
    m = float(row.max())
    return float(row[tok]) - m - float(np.log(np.exp(row - m).sum()))


class LlamaSession:
    """Drives one llama.cpp context: what sequence 0 holds, prefill with reuse, decode."""

    def __init__(self, llm: Any, scope: tuple, cache: PrefixCache | None, *,
                 n_threads: int, n_threads_batch: int, save_min_tokens: int = 16) -> None:
        import llama_cpp

        self._lc = llama_cpp
        self.llm = llm
        self.ctx = llm._ctx.ctx
        self.mem = llama_cpp.llama_get_memory(self.ctx)
        self.scope = scope
        self.cache = cache
        self.n_vocab = llm.n_vocab()
        self.n_batch = llm.n_batch
        self.n_threads = n_threads
        self.n_threads_batch = n_threads_batch
        self.save_min_tokens = save_min_tokens
        self.tokens = np.zeros(0, dtype=np.int32)  # what sequence 0's KV cells hold, in order
        self._batch = llama_cpp.llama_batch_init(max(self.n_batch, 1), 0, 1)
        self._threads_set: tuple[int, int] | None = None
        self.vocab = llm._model.vocab
        self._adapter: Any = None

    def bind(self, scope: tuple, adapter: Any, cache: PrefixCache | None, *, n_threads: int,
             n_threads_batch: int) -> None:
        """Make this context serve a model: its LoRA adapter (None: the bare base), the scope its
        KV states belong to, its prefix cache and threads. A context shared by models with
        different adapters drops its live KV cells when the scope changes: they were computed
        under the other adapter (cached states stay, keyed by their own scope)."""
        if adapter is not self._adapter:
            if adapter is None:
                self._lc.llama_set_adapters_lora(self.ctx, None, 0, None)
            else:
                arr = (self._lc.llama_adapter_lora_p_ctypes * 1)(adapter)
                scales = (ctypes.c_float * 1)(1.0)
                if self._lc.llama_set_adapters_lora(self.ctx, arr, 1, scales) != 0:
                    from ..errors import ModelLoadError

                    raise ModelLoadError("llama.cpp could not set the LoRA adapter",
                                         where="llamacpp")
            self._adapter = adapter
        if scope != self.scope:
            self._truncate(0)
            self.scope = scope
        self.cache = cache
        self.n_threads, self.n_threads_batch = n_threads, n_threads_batch

    def close(self) -> None:
        if self._batch is not None:
            self._lc.llama_batch_free(self._batch)
            self._batch = None

    def _set_threads(self) -> None:
        want = (self.n_threads, self.n_threads_batch)
        if self._threads_set != want:
            self._lc.llama_set_n_threads(self.ctx, *want)
            self._threads_set = want

    # -- KV bookkeeping ------------------------------------------------------------------
    def _truncate(self, n: int) -> None:
        if n < len(self.tokens):
            if not self._lc.llama_memory_seq_rm(self.mem, 0, n, -1):
                self._lc.llama_memory_seq_rm(self.mem, 0, -1, -1)
                n = 0
            self.tokens = self.tokens[:n]

    def _restore(self, entry: Any, n: int) -> bool:
        ok = self._lc.llama_state_seq_set_data(self.ctx, entry.state, entry.nbytes, 0)
        if not ok:
            self._lc.llama_memory_seq_rm(self.mem, 0, -1, -1)
            self.tokens = self.tokens[:0]
            return False
        self.tokens = entry.tokens.copy()
        self._truncate(n)
        return True

    def save(self) -> None:
        """Put what sequence 0 holds into the prefix cache (unless it adds nothing)."""
        if self.cache is None or self.cache.max_bytes <= 0:
            return
        if len(self.tokens) < self.save_min_tokens or self.cache.dominated_by(self.scope,
                                                                              self.tokens):
            return
        size = self._lc.llama_state_seq_get_size(self.ctx, 0)
        buf = (ctypes.c_uint8 * size)()
        got = self._lc.llama_state_seq_get_data(self.ctx, buf, size, 0)
        if got:
            self.cache.put(self.scope, self.tokens, buf, got)

    # -- evaluation ----------------------------------------------------------------------
    def _decode(self, toks: Sequence[int], all_logits: bool, tail: int = 1) -> np.ndarray:
        """Evaluate `toks` after what the context holds; logits rows: all, or the last `tail`
        (one output-projection row each; the rows before them are never computed)."""
        from ..errors import GenerationError

        rows = []
        pos0 = len(self.tokens)
        first_row = 0 if all_logits else max(0, len(toks) - tail)
        for i in range(0, len(toks), self.n_batch):
            chunk = toks[i:i + self.n_batch]
            b = self._batch
            b.n_tokens = len(chunk)
            want = []
            for j, t in enumerate(chunk):
                b.token[j] = int(t)
                b.pos[j] = pos0 + i + j
                b.n_seq_id[j] = 1
                b.seq_id[j][0] = 0
                b.logits[j] = keep = i + j >= first_row
                if keep:
                    want.append(j)
            rc = self._lc.llama_decode(self.ctx, b)
            if rc != 0:
                self._truncate(pos0)  # what was half-decoded is dropped, the context stays usable
                raise GenerationError(f"llama_decode returned {rc}", where="llamacpp")
            self.tokens = np.concatenate([self.tokens, np.asarray(chunk, dtype=np.int32)])
            for j in want:
                rows.append(np.ctypeslib.as_array(self._lc.llama_get_logits_ith(self.ctx, j),
                                                  shape=(self.n_vocab,)).copy())
        return np.stack(rows) if rows else np.zeros((0, self.n_vocab), np.float32)

    def prefill(self, prompt: np.ndarray) -> tuple[np.ndarray, int]:
        """Bring sequence 0 to `prompt`, reusing the longest cached prefix; the last logits row
        and how many prompt tokens were reused."""
        rows, reused = self._prefill(prompt, 1)
        return rows[-1], reused

    def _prefill(self, prompt: np.ndarray, tail: int) -> tuple[np.ndarray, int]:
        """`prefill` returning the last `tail` logits rows."""
        self._set_threads()
        live = _common_prefix(self.tokens, prompt)
        entry, cached = (None, 0)
        if self.cache is not None:
            entry, cached = self.cache.lookup(self.scope, prompt)
        # At least two tokens are evaluated. One is needed for the logits that start the answer;
        # the second keeps the answer bit-identical to a fresh evaluation: llama.cpp computes a
        # one-token batch with other kernels than a longer one (measured here: last-row logits
        # off by up to 0.34 when only the final prompt token was evaluated, 0.0 with two or
        # more), so a repeated prompt could otherwise flip a near-tie and answer differently.
        limit = max(0, len(prompt) - max(2, tail))
        if entry is not None and min(cached, limit) > min(live, limit):
            if not self._restore(entry, min(cached, limit)):
                self._truncate(0)
        else:
            self._truncate(min(live, limit))
        reused = len(self.tokens)
        return self._decode(prompt[reused:], all_logits=False, tail=tail), reused

    # -- the loop --------------------------------------------------------------------------
    def run(self, prompt: np.ndarray, *, matcher: Any = None, temperature: float = 0.0,
            top_p: float = 1.0, seed: int | None = 0, max_tokens: int = 256,
            stop: Sequence[str] = (), eog: Any = None,
            on_tokens: Callable[[list[int]], None] | None = None,
            cancel: threading.Event | None = None, score_forced: bool = True) -> LoopResult:
        """Generate after `prompt`. on_tokens(out) is called (on this thread) each time tokens
        are added to the answer (streaming); with `cancel` set the loop stops before the next
        token, finish ``"cancelled"`` (a client that went away). score_forced=False: forced
        tokens get no log-probability (`logprobs` holds the chosen tokens' only) and a forced
        batch that ends the answer is not evaluated (see the module docstring).

        One ``llama_decode`` per choice: the tokens the grammar forces at the start of the
        answer (``{"category":"``) are evaluated in the prompt's batch, and a chosen token is
        evaluated in one batch with the forced tokens that follow it (``true`` then
        ``,"reason":"``), so a call costs the prefill plus one decode per token the model
        chose, not one per chosen token and one per forced run."""
        t0 = time.perf_counter()
        rng = np.random.default_rng(seed) if temperature > 0 else None
        out: list[int] = []
        lps: list[float] = []
        forced = masked = 0
        finish = "length"
        cut_text = None
        bitmask = None
        is_eog = eog or (lambda t: self._lc.llama_vocab_is_eog(self.vocab, t))

        def stopped() -> bool:
            return (matcher is not None and matcher.is_stopped()) or len(out) >= max_tokens

        # the forced start of the answer rides in the prompt's batch
        head: list[int] = []
        if matcher is not None and not matcher.is_stopped() and max_tokens > 0:
            head = list(matcher.compute_ff_tokens())[:max_tokens]
            if head and not matcher.consume_tokens(head):
                raise _grammar_error(matcher)
            out.extend(head)
            forced += len(head)
        ends = stopped()
        # a forced head that ends the answer is evaluated only to score it (its last token's row
        # is never needed); the prompt's state is still worth caching for the next call
        feed = head[:-1] if ends else head
        if ends and not score_forced:
            feed = []
        tail = (len(feed) + 1) if score_forced else 1
        rows, reused = self._prefill(np.concatenate([prompt, feed]).astype(np.int32), tail)
        if head and score_forced:
            lps.extend(_logprob(r, t) for r, t in zip(rows, head))
        logits = rows[-1]
        t_prefill = time.perf_counter() - t0
        self.save()
        ttft = time.perf_counter() - t0 if head else None
        if head and on_tokens is not None:
            on_tokens(out)
        if ends:
            finish = "stop" if matcher is not None and matcher.is_stopped() else "length"
        while not ends:
            if cancel is not None and cancel.is_set():
                finish = "cancelled"
                break
            tok = self._pick(logits, temperature, top_p, rng)
            if matcher is not None and not matcher.validate_tokens([tok]):
                masked += 1
                if bitmask is None:
                    bitmask = np.empty((self.n_vocab + 31) // 32, dtype=np.int32)
                matcher.unsafe_compute_mask_ptr(bitmask.ctypes.data, bitmask.nbytes)
                allowed = np.unpackbits(bitmask.view(np.uint8), bitorder="little")[:self.n_vocab]
                masked_logits = np.where(allowed.astype(bool), logits, -np.inf)
                if not np.isfinite(masked_logits).any():
                    raise _grammar_error(matcher)
                tok = self._pick(masked_logits, temperature, top_p, rng)
            ttft = ttft if ttft is not None else time.perf_counter() - t0
            lp = _logprob(logits, tok)
            if is_eog(tok):
                finish = "stop"
                break
            lps.append(lp)
            out.append(tok)
            if matcher is not None and not matcher.consume_token(tok):
                raise _grammar_error(matcher)
            if stop and not (matcher is not None and matcher.is_stopped()):
                cut_text = before_stop(self.llm.detokenize(out).decode("utf-8", errors="ignore"),
                                       stop)
                if cut_text is not None:
                    if on_tokens is not None:
                        on_tokens(out)
                    finish = "stop"
                    break
            # the forced tokens after the choice
            ff: list[int] = []
            if matcher is not None and not stopped():
                ff = list(matcher.compute_ff_tokens())[:max_tokens - len(out)]
                if ff and not matcher.consume_tokens(ff):
                    raise _grammar_error(matcher)
                out.extend(ff)
                forced += len(ff)
            if on_tokens is not None:
                on_tokens(out)
            pending = [tok, *ff]
            if stopped():
                # nothing after the answer needs these tokens' KV cells; a forced tail is
                # evaluated only for its confidence
                if ff and score_forced:
                    rows = self._decode(pending[:-1], all_logits=True)
                    lps.extend(_logprob(r, t) for r, t in zip(rows, ff))
                finish = "stop" if matcher is not None and matcher.is_stopped() else "length"
                break
            rows = self._decode(pending, all_logits=False,
                                tail=len(pending) if score_forced else 1)
            if score_forced:
                lps.extend(_logprob(r, t) for r, t in zip(rows[:-1], ff))
            logits = rows[-1]
        return LoopResult(out, lps, finish, len(prompt), reused, forced, masked, ttft, cut_text,
                          {"prefill_s": t_prefill, "total_s": time.perf_counter() - t0})

    @staticmethod
    def _pick(logits: np.ndarray, temperature: float, top_p: float, rng: Any) -> int:
        if rng is None or temperature <= 0:
            return int(np.argmax(logits))
        z = logits.astype(np.float64) / temperature
        z -= z[np.isfinite(z)].max()
        p = np.exp(z)
        p /= p.sum()
        if top_p < 1.0:
            order = np.argsort(-p)
            keep = order[: int(np.searchsorted(np.cumsum(p[order]), top_p) + 1)]
            q = np.zeros_like(p)
            q[keep] = p[keep]
            p = q / q.sum()
        return int(rng.choice(len(p), p=p))


def _grammar_error(matcher: Any) -> Exception:
    from ..errors import GenerationError

    return GenerationError(f"constraint failed: {matcher.get_error() or 'no token allowed'}",
                           where="llamacpp")
