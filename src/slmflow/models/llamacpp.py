"""llama.cpp in-process: the fast CPU path for GGUF models (the embedded default runs here).

Why we drive ``Llama.generate`` token by token instead of calling ``create_chat_completion``:
confidence needs the probability of each produced token under the model's *raw* distribution,
and llama-cpp-python only returns logprobs when the context was built with ``logits_all=True``
(a logits row kept for every prompt token: ~200 MB at n_ctx=1024 for a 49k vocabulary, and
slower prompt processing). Reading the last-position logits, which llama.cpp computes anyway,
right after each token is sampled costs one log-sum-exp over the vocabulary per token. The loop
keeps llama-cpp-python's prompt-prefix KV reuse (``reset=True`` matches the previous prompt).

Structure: the JSON schema becomes a GBNF grammar (llama-cpp-python's converter), compiled once
per schema on a worker thread (never on the event loop) and parsed by llama.cpp before first use
(`_check_grammar`), so an unsupported schema is a `SchemaError` here, not a crash inside the
sampler.

Concurrency: one llama.cpp context runs one generation at a time. ``pool_size`` contexts share the
memory-mapped weights; requests wait for a free context (a thread-safe queue, so the model
works from any event loop), never interleave, and each context always runs on its own thread.

This module is the `Model`: loading, prompts, the grammar check, one generation. Beside it:
`llamacpp_pool` (the contexts: loading them, thread counts, the pool and the base shared across
adapters), `llamacpp_engine` (the token loop of the default engine), `llamacpp_stream` (that loop
streamed: text deltas, the worker thread -> asyncio bridge), `llamacpp_weights` (weight formats).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import queue
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache, partial
from pathlib import Path
from typing import Any, AsyncIterator, Sequence

import numpy as np

from ..errors import (BackendUnavailableError, ConfigError, ContextLengthError, GenerationError,
                      ModelLoadError, ModelNotFoundError, SchemaError)
from ..structured import OutputSpec, attempt_budget, generate_validated
from ..types import (Message, MessageLike, ModelInfo, Response, Settings, ToolSpec, Usage,
                     confidence_from_logprobs)
from .base import Model, call_parts, sent_messages
from .llamacpp_pool import (_LOAD_LOCK, _SharedBase, _import_llama_cpp, _quiet_stderr, acquire,
                            close_contexts, default_threads, default_threads_batch, join_base,
                            leave_base, pool_of)
from .llamacpp_weights import DEFAULT_WEIGHTS, WEIGHT_FORMATS, default_weights, gguf_in_format

__all__ = ["LlamaCppModel", "default_threads", "default_threads_batch", "gguf_in_format",
           "default_weights", "WEIGHT_FORMATS", "DEFAULT_WEIGHTS"]


@lru_cache(maxsize=256)
def _gbnf(schema_text: str) -> str:
    from llama_cpp.llama_grammar import json_schema_to_gbnf

    try:
        return json_schema_to_gbnf(schema_text)
    except Exception as e:  # the converter raises plain exceptions for unsupported keywords
        raise SchemaError(f"llama.cpp cannot turn this schema into a grammar: {e}",
                          where="llamacpp") from None


_PARSED: set[int] = set()  # hashes of grammars llama.cpp's parser has accepted


def _check_grammar(llm: Any, gbnf: str) -> None:
    """Parse ``gbnf`` with llama.cpp itself, once per grammar. Its parser refuses some grammars
    the converter makes (a bounded repetition over ~1000, e.g. ``maxLength: 2000``) by returning
    no sampler, and llama-cpp-python adds that NULL to its sampler chain: a segfault of the
    whole process at the first token. Here it is a `SchemaError`."""
    h = hash(gbnf)
    if h in _PARSED:
        return
    import llama_cpp

    sampler = llama_cpp.llama_sampler_init_grammar(llm._model.vocab, gbnf.encode("utf-8"),
                                                   b"root")
    if not sampler:
        raise SchemaError("llama.cpp refused the grammar made from this schema (too many "
                          "repetitions: keep maxLength, maxItems and {m,n} counts under 1000)",
                          where="llamacpp")
    llama_cpp.llama_sampler_free(sampler)
    if len(_PARSED) > 4096:
        _PARSED.clear()
    _PARSED.add(h)


class LlamaCppModel(Model):
    """A GGUF model run in-process by llama.cpp.

    path: the GGUF file. lora_path: a LoRA adapter in GGUF form. pool_size: contexts (concurrent
    generations). n_threads: per context (default: `default_threads`).
    """

    def __init__(self, path: str | Path, *, name: str | None = None, n_ctx: int = 2048,
                 n_threads: int | None = None, pool_size: int = 1, lora_path: str | Path | None = None,
                 adapter: str | None = None, chat: bool = True, n_batch: int = 512,
                 n_threads_batch: int | None = None, engine: str | None = None,
                 prefix_cache: bool | None = None, weights: str | None = None) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise ModelNotFoundError(f"GGUF file not found: {self.path}", where=name or str(path))
        self.source_path = self.path
        self.lora_path = Path(lora_path) if lora_path else None
        if self.lora_path is not None and not self.lora_path.is_file():
            raise ModelNotFoundError(f"LoRA adapter file not found: {self.lora_path}",
                                     where=name or str(path))
        from .gguf_check import check_gguf_files  # what llama.cpp would refuse, it crashes on
        check_gguf_files(self.path, self.lora_path)
        self.weights = default_weights() if weights is None else (
            None if weights.lower() in ("as-shipped", "shipped") else weights.lower())
        if self.weights is not None:  # converted by llama.cpp itself from the checked file
            self.path = gguf_in_format(self.path, self.weights, where=name or str(path))
        self.n_ctx = n_ctx
        self.pool_size = max(1, pool_size)
        self.n_threads = n_threads or default_threads(self.pool_size)
        self.n_threads_batch = n_threads_batch or default_threads_batch(self.pool_size)
        self.n_batch = n_batch
        self.engine = engine or os.environ.get("SLMFLOW_LLAMA_ENGINE", "fast")
        if self.engine not in ("fast", "legacy"):
            raise ConfigError(f"engine must be 'fast' or 'legacy', got {self.engine!r}",
                              where=name or str(path))
        if prefix_cache is None:
            prefix_cache = os.environ.get("SLMFLOW_PREFIX_CACHE", "on").lower() not in (
                "0", "off", "false", "no")
        self.prefix_cache = prefix_cache
        self._scope: tuple | None = None
        self._base: _SharedBase | None = None
        self._base_key: tuple | None = None
        self._lora_ptr: Any = None
        self.chat = chat
        adapter = adapter or (self.lora_path.stem if self.lora_path else None)
        self.info = ModelInfo("llama.cpp", name or self.path.stem, adapter)
        self._llamas: list[Any] = []
        self._free: queue.Queue = queue.Queue()
        self._workers: dict[int, ThreadPoolExecutor] = {}
        self._formatter = None
        self._load_lock = threading.Lock()

    # -- loading ---------------------------------------------------------------------------
    def _new_llama(self, with_lora: bool = True):
        llama_cpp = _import_llama_cpp()
        lora = self.lora_path if with_lora else None
        try:
            with _LOAD_LOCK, _quiet_stderr():
                llm = llama_cpp.Llama(
                    model_path=str(self.path), n_ctx=self.n_ctx, n_threads=self.n_threads,
                    n_threads_batch=self.n_threads_batch, n_batch=self.n_batch, verbose=False,
                    lora_path=str(lora) if lora else None, seed=0)
        except Exception as e:
            raise ModelLoadError(f"llama.cpp could not load {self.path.name}: {e}",
                                 where=self.info.identity) from None
        if lora is not None and not llm._lora_adapter:  # refused: NULL, not None
            llm.close()
            raise ModelLoadError(f"llama.cpp refused the LoRA adapter {self.lora_path}",
                                 where=self.info.identity)
        return llm

    def load(self) -> "LlamaCppModel":
        """Load the weights now (otherwise the first call does). Idempotent."""
        with self._load_lock:
            if not self._llamas and self.engine == "fast":
                key = (str(self.path.resolve()), self.n_ctx, self.n_batch, self.pool_size)
                base = join_base(key, self)
                self._base, self._base_key = base, key
                try:
                    if self.lora_path is not None:
                        self._lora_ptr = base.adapter(self.lora_path, self.info.identity)
                except BaseException:
                    self._release_base()
                    raise
                self._llamas, self._free, self._workers = base.llamas, base.free, base.workers
                self._formatter = self._make_formatter(self._llamas[0])
            elif not self._llamas:
                self._llamas = [self._new_llama() for _ in range(self.pool_size)]
                self._free, self._workers = pool_of(self._llamas, self.info.name)
                self._formatter = self._make_formatter(self._llamas[0])
        return self

    def _make_formatter(self, llm):
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        template = llm.metadata.get("tokenizer.chat_template")
        if not template or not self.chat:
            return None
        eos = llm._model.token_get_text(llm.token_eos()) if llm.token_eos() >= 0 else ""
        bos = llm._model.token_get_text(llm.token_bos()) if llm.token_bos() >= 0 else ""
        return Jinja2ChatFormatter(template=template, eos_token=eos, bos_token=bos)

    def prompt_text(self, messages: Sequence[Message]) -> str:
        """The exact prompt string the model sees (chat template applied)."""
        self.load()
        if self._formatter is None:
            # A base model without a chat template: plain completion of the concatenated text.
            return "\n\n".join(m.content for m in messages)
        return self._formatter(messages=[m.to_openai() for m in messages]).prompt

    # -- generation ------------------------------------------------------------------------
    def _run(self, llm, prompt: str, spec: OutputSpec | None, settings: Settings,
             max_tokens: int) -> Response:
        if self.engine == "legacy":
            return self._run_legacy(llm, prompt, spec, settings, max_tokens)
        return self._run_fast(llm, prompt, spec, settings, max_tokens)

    def _session(self, llm):
        """The token loop bound to this context (llamacpp_engine.LlamaSession)."""
        from .llamacpp_engine import LlamaSession
        from .llamacpp_prefix import file_scope, shared_cache

        if self._scope is None:
            self._scope = file_scope(self.path, self.lora_path) + (self.n_ctx,)
        sessions = self._base.sessions  # the fast engine always runs on a shared base
        sess = sessions.get(id(llm))
        if sess is None:
            sess = sessions[id(llm)] = LlamaSession(llm, self._scope, None, n_threads=self.n_threads,
                                                    n_threads_batch=self.n_threads_batch)
        # this model's adapter, scope, cache and threads on the (possibly shared) context
        sess.bind(self._scope, self._lora_ptr, shared_cache() if self.prefix_cache else None,
                  n_threads=self.n_threads, n_threads_batch=self.n_threads_batch)
        return sess

    def _tokens(self, llm, prompt: str, max_tokens: int) -> tuple[list[int], int]:
        """The prompt's tokens and the output budget that fits the context after them."""
        tokens = llm.tokenize(prompt.encode("utf-8"), add_bos=True, special=True)
        if len(tokens) + 1 > self.n_ctx:
            raise ContextLengthError(
                f"prompt is {len(tokens)} tokens; the context window is {self.n_ctx}",
                where=self.info.identity, prompt_tokens=len(tokens), n_ctx=self.n_ctx)
        return tokens, min(max_tokens, self.n_ctx - len(tokens))

    def _run_fast(self, llm, prompt: str, spec: OutputSpec | None, settings: Settings,
                  max_tokens: int, on_tokens: Any = None, cancel: Any = None) -> Response:
        from .llamacpp_engine import lltokenizer, new_matcher

        t0 = time.perf_counter()
        tokens, max_tokens = self._tokens(llm, prompt, max_tokens)
        matcher = None
        if spec is not None:
            try:
                matcher = new_matcher(lltokenizer(self.path),
                                      settings.constraint or spec.schema_text)
            except ImportError as e:
                raise BackendUnavailableError(f"llguidance is not installed ({e})",
                                              where=self.info.identity) from None
        sess = self._session(llm)
        try:
            res = sess.run(np.asarray(tokens, dtype=np.int32), matcher=matcher,
                           temperature=settings.temperature, top_p=settings.top_p,
                           seed=settings.seed, max_tokens=max_tokens, stop=settings.stop,
                           on_tokens=on_tokens, cancel=cancel,
                           score_forced=settings.score_forced)
        except (GenerationError, SchemaError):
            raise
        except Exception as e:
            raise GenerationError(f"llama.cpp failed while generating: {e}",
                                  where=self.info.identity) from None
        text = res.text if res.text is not None else llm.detokenize(res.tokens).decode(
            "utf-8", errors="replace")
        return Response(
            text=text, model=self.info,
            usage=Usage(len(tokens), len(res.tokens), res.reused_tokens),
            latency_s=time.perf_counter() - t0, finish_reason=res.finish,
            # an answer the constraint forced whole, unscored: the model chose nothing
            confidence=(1.0 if not res.logprobs and res.tokens and not settings.score_forced
                        else confidence_from_logprobs(res.logprobs)),
            token_logprobs=tuple(res.logprobs), time_to_first_token_s=res.ttft_s)

    def _run_legacy(self, llm, prompt: str, spec: OutputSpec | None, settings: Settings,
                    max_tokens: int) -> Response:
        """llama-cpp-python's ``Llama.generate`` with the GBNF grammar sampler (engine="legacy",
        the path before the prefix cache and llguidance; kept for comparison)."""
        import llama_cpp

        from .llamacpp_engine import before_stop

        t0 = time.perf_counter()
        tokens, max_tokens = self._tokens(llm, prompt, max_tokens)
        grammar = None
        if spec is not None:
            # the legacy path keeps the call's schema: llama.cpp's GBNF converter does not
            # follow every keyword a `constraint` may use (patterns of alternatives)
            grammar = llama_cpp.LlamaGrammar.from_string(_gbnf(spec.schema_text), verbose=False)
        vocab = llm._model.vocab
        n_vocab = llm.n_vocab()
        out: list[int] = []
        logprobs: list[float] = []
        finish = "length"
        ttft = None
        text = ""
        gen = llm.generate(tokens, temp=settings.temperature, top_p=settings.top_p, top_k=0,
                           min_p=0.0, repeat_penalty=1.0, grammar=grammar, reset=True)
        try:
            for tok in gen:
                if ttft is None:
                    ttft = time.perf_counter() - t0
                # The context still holds the logits that produced `tok`: the raw distribution.
                row = np.ctypeslib.as_array(llm._ctx.get_logits_ith(-1), shape=(n_vocab,))
                m = float(row.max())
                logprobs.append(float(row[tok]) - m - float(np.log(np.exp(row - m).sum())))
                if llama_cpp.llama_vocab_is_eog(vocab, tok):
                    logprobs.pop()  # the end token is not part of the answer
                    finish = "stop"
                    break
                out.append(tok)
                if settings.stop:
                    text = llm.detokenize(out).decode("utf-8", errors="ignore")
                    cut = before_stop(text, settings.stop)
                    if cut is not None:
                        text, finish = cut, "stop"
                        break
                if len(out) >= max_tokens:
                    break
        except Exception as e:
            raise GenerationError(f"llama.cpp failed while generating: {e}",
                                  where=self.info.identity) from None
        finally:
            gen.close()
        if not (settings.stop and finish == "stop"):
            text = llm.detokenize(out).decode("utf-8", errors="replace")
        return Response(
            text=text, model=self.info, usage=Usage(len(tokens), len(out)),
            latency_s=time.perf_counter() - t0, finish_reason=finish,
            confidence=confidence_from_logprobs(logprobs), token_logprobs=tuple(logprobs),
            time_to_first_token_s=ttft)

    def _grammar(self, schema_text: str) -> str:
        """Compile (and cache) the constraint for a schema; a schema the engine cannot turn
        into a grammar is a `SchemaError` here, before any work is queued."""
        if self.engine == "legacy":
            gbnf = _gbnf(schema_text)
            _check_grammar(self._llamas[0], gbnf)
            return gbnf
        from .llamacpp_engine import grammar_for

        try:
            return grammar_for(schema_text)
        except ImportError as e:
            raise BackendUnavailableError(f"llguidance is not installed ({e})",
                                          where=self.info.identity) from None
        except ValueError as e:
            raise SchemaError(f"llguidance cannot turn this schema into a grammar: {e}",
                              where=self.info.identity) from None

    async def _run_async(self, prompt: str, spec: OutputSpec | None, settings: Settings,
                         max_tokens: int) -> Response:
        """Wait for a free context, then generate on that context's own worker thread.

        One dedicated thread per context: handing a llama.cpp context from one OS thread to
        another between requests cost 2x throughput here (8 concurrent requests: 77 tok/s through
        a shared thread pool vs 173 tok/s one after another)."""
        llm = await acquire(self._free)
        try:
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(self._workers[id(llm)], self._run, llm, prompt,
                                              spec, settings, max_tokens)
        finally:
            self._free.put(llm)

    async def _ready(self, *specs: OutputSpec | None) -> None:
        """Weights loaded and each spec's constraint compiled, off the event loop (a big schema
        takes a while) and so inside the caller's timeout: a schema error surfaces here, before
        any work is queued."""
        if not self._llamas:
            await asyncio.to_thread(self.load)
        for spec in specs:
            if spec is not None:
                await asyncio.to_thread(self._grammar, spec.schema_text)

    async def generate(self, messages: Sequence[MessageLike] | str, *, schema: Any = None,
                       tools: Sequence[ToolSpec] | None = None,
                       settings: Settings | None = None) -> Response:
        settings, spec, msgs = call_parts(messages, schema, tools, settings)
        await self._ready(*((spec, spec.tightened()) if spec is not None else ()))

        async def attempt(s: OutputSpec | None, repair: bool) -> Response:
            prompt = self.prompt_text(sent_messages(msgs, s, settings))
            max_tokens = attempt_budget(s, settings.max_tokens, repair)
            return await self._run_async(prompt, s, settings, max_tokens)

        return await generate_validated(attempt, spec, where=self.info.identity)

    async def _stream(self, messages: Sequence[MessageLike] | str, *, schema: Any = None,
                      tools: Sequence[ToolSpec] | None = None,
                      settings: Settings | None = None) -> AsyncIterator[Any]:
        """Token streaming: the engine's loop runs on the context's worker thread and hands
        each decoded piece to this generator through an asyncio queue. Closing the generator
        (the consumer left) sets a cancel flag the loop checks before every token; the context
        goes back to the pool once the worker has let go of it. Tool calls and the legacy
        engine answer whole (the default)."""
        if tools or self.engine != "fast":
            async for item in super()._stream(messages, schema=schema, tools=tools,
                                              settings=settings):
                yield item
            return
        settings, spec, msgs = call_parts(messages, schema, None, settings)
        await self._ready(spec)
        prompt = self.prompt_text(sent_messages(msgs, spec, settings))
        from ..structured import validate_streamed
        from .llamacpp_stream import stream_on_worker

        llm = await acquire(self._free)
        run = partial(self._run_fast, llm, prompt, spec, settings, settings.max_tokens)
        async with contextlib.aclosing(stream_on_worker(llm, self._workers, self._free,
                                                        settings.stop, run)) as items:
            async for item in items:
                yield (validate_streamed(spec, item, where=self.info.identity)
                       if isinstance(item, Response) else item)

    def _release_base(self) -> None:
        base, self._base = self._base, None
        if base is None:
            return
        leave_base(base, self._base_key)
        self._lora_ptr = None

    async def aclose(self) -> None:
        if self._base is not None:  # the shared base closes with its last user
            self._release_base()
            self._llamas, self._workers, self._free = [], {}, queue.Queue()
            return
        close_contexts(self._llamas, self._workers)
        self._workers = {}
        self._llamas = []
        self._free = queue.Queue()
