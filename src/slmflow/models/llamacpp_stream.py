"""Streaming for llama.cpp: the token loop on a context's worker thread, its text handed to an
async generator as it grows.

Why a module of its own: the loop (llamacpp_engine) runs on a plain thread and knows nothing of
asyncio; the model (llamacpp.py) only says what to run. Between them sit two jobs that belong
together and to neither: turning a growing token list into text deltas that add up to exactly
the whole answer's text (`_Deltas`: a character split across tokens waits for its last byte, a
stop string is never sent), and the bridge from the worker thread to the consumer's event loop
(`stream_on_worker`: an asyncio queue fed with ``call_soon_threadsafe``, a cancel flag the loop
checks before every token, the context given back by the worker itself).
"""

from __future__ import annotations

import asyncio
import queue
import threading
from dataclasses import replace
from typing import Any, AsyncIterator, Callable, Mapping, Sequence

from ..types import Response
from .llamacpp_engine import before_stop


def _complete_utf8(b: bytes) -> str:
    """`b` decoded, without a multi-byte character whose last bytes are still to come (a
    character split across tokens is sent whole, with the token that completes it)."""
    i, n = len(b), 0
    while i > 0 and n < 3 and (b[i - 1] & 0xC0) == 0x80:
        i, n = i - 1, n + 1
    if i > 0 and b[i - 1] >= 0xC0:
        lead = b[i - 1]
        need = 2 if lead < 0xE0 else 3 if lead < 0xF0 else 4
        if len(b) - (i - 1) < need:
            b = b[:i - 1]
    return b.decode("utf-8", errors="replace")


def _held_back(text: str, stop: Sequence[str]) -> int:
    """Characters at the end of `text` that may be the start of a stop string (not sent yet:
    the stop string would be cut from the answer)."""
    best = 0
    for s in stop:
        for k in range(min(len(s), len(text)), best, -1):
            if text.endswith(s[:k]):
                best = k
                break
    return best


class _Deltas:
    """Text deltas of a growing answer, computed on the worker thread from all its tokens
    (llama.cpp's detokenizer on the whole list, so the pieces add up to exactly the text a
    whole-answer call decodes). Never sends a stop string or a piece that may begin one."""

    def __init__(self, llm: Any, stop: Sequence[str], send: Any) -> None:
        self.llm, self.stop, self.send = llm, tuple(s for s in stop if s), send
        self.tokens: list[int] = []
        self.sent = 0
        self._text = ""

    def _visible(self, text: str, final: bool) -> str:
        cut = before_stop(text, self.stop)
        if cut is not None:
            return cut
        return text if final or not self.stop else text[:len(text) - _held_back(text,
                                                                                    self.stop)]

    def feed(self, out: list[int]) -> None:
        self.tokens = out
        text = self._visible(_complete_utf8(self.llm.detokenize(out)), final=False)
        if len(text) > self.sent:
            self._text = text
            piece, self.sent = text[self.sent:], len(text)
            self.send(piece)

    def final(self, finish: str) -> str:
        """The whole answer's text; what was sent is always its beginning."""
        text = self._visible(self.llm.detokenize(self.tokens).decode("utf-8", errors="replace"),
                             final=True)
        sent = self._text[:self.sent]
        if not text.startswith(sent):  # cannot happen with a prefix-stable detokenizer
            text = sent
        return text


async def stream_on_worker(llm: Any, workers: Mapping[int, Any], free: queue.Queue,
                           stop: Sequence[str],
                           run: Callable[[Callable[[list[int]], None], threading.Event],
                                         Response]) -> AsyncIterator[Any]:
    """Run ``run(on_tokens, cancel)`` (the token loop on context `llm`, which the caller took
    from `free`) on that context's worker thread (``workers[id(llm)]``); yield the text deltas
    of its tokens as they come, then its `Response` with the text those deltas add up to.

    The context goes back to `free` from the worker itself when the loop ends (the consumer's
    loop may be gone by then), or here if the work cannot be started. Closing this generator
    (the consumer left) sets the cancel flag the loop checks before every token."""
    loop = asyncio.get_running_loop()
    q: asyncio.Queue = asyncio.Queue()
    cancel = threading.Event()
    deltas = _Deltas(llm, stop, lambda d: loop.call_soon_threadsafe(q.put_nowait, d))

    def work() -> Response:
        try:
            return run(deltas.feed, cancel)
        finally:  # back to the pool from the worker itself: the consumer's loop may be gone
            free.put(llm)

    try:
        fut = loop.run_in_executor(workers[id(llm)], work)
    except BaseException:
        free.put(llm)
        raise

    def done(f: Any) -> None:  # after every delta: they were queued first, in order
        q.put_nowait(None)
        if not f.cancelled():
            f.exception()  # retrieved: no "never retrieved" warning for a closed stream

    fut.add_done_callback(done)
    try:
        while True:
            d = await q.get()
            if d is None:
                break
            yield d
        r = fut.result()
        text = deltas.final(r.finish_reason)
        if len(text) > deltas.sent:
            yield text[deltas.sent:]
        yield replace(r, text=text)
    finally:
        if not fut.done():
            cancel.set()
