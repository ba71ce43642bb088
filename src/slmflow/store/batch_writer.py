"""`CallLogWriter`: records reach the call log without making a request wait.

Why a background writer: a request must not wait for a disk or network write, and under load
many small transactions are slower than one batch. Records go into an unbounded in-memory queue
and a single thread writes them in batches; a failed batch is retried (never dropped), `flush()`
waits until everything submitted is written, and `close()` drains the queue (whatever still
cannot be written after its timeout goes to ``calls.unsent.jsonl`` beside the home, so no record
is silently lost).

Why `committed()` (group commit): a process killed with SIGKILL loses whatever is still queued,
so a client that got an answer might not find its call. The gateway awaits ``committed()`` before
it sends an answer: it resolves once everything submitted so far is written. Requests arriving
while a batch is being written form the next batch, so the wait costs one transaction shared by
every concurrent request, not one each (bench/gateway.py measures it; the writer then runs with
``max_wait_s=0``: it writes what is queued at once instead of lingering for a fuller batch).

Why a module of its own: the writer is a queue and a thread over any `CallLog`; what goes into it
(agent and model calls, feedback) and when logging is on are `slmflow.store.writer`'s, which
holds the process-wide writer and re-exports this class.
"""

from __future__ import annotations

import asyncio
import json
import logging
import queue
import threading
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from .calllog import CallLog, open_call_log
from .records import CallRecord, Example, _json_default

__all__ = ["CallLogWriter"]

log = logging.getLogger("slmflow.store")


_STOP = object()


class CallLogWriter:
    """Queue + one background thread writing batches; never drops a record (see module doc)."""

    def __init__(self, log: CallLog | str | None = None, *, batch_size: int = 256,
                 max_wait_s: float = 0.05, unsent_path: str | Path | None = None) -> None:
        self.log = log if isinstance(log, CallLog) else open_call_log(log)
        self.batch_size = batch_size
        self.max_wait_s = max_wait_s
        self._q: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._cv = threading.Condition()
        self.submitted = 0
        self.written = 0
        self.failed_batches = 0
        self.last_error: str | None = None
        self._closed = False
        self._unsent = Path(unsent_path) if unsent_path else None
        self._waiters: list[tuple[int, Any, Any]] = []  # (count, loop, future) of committed()
        self._thread = threading.Thread(target=self._run, name="slmflow-calllog", daemon=True)
        self._thread.start()

    @property
    def pending(self) -> int:
        return self.submitted - self.written

    def submit(self, record: CallRecord | Example) -> str:
        if self._closed:
            # After close, write synchronously rather than lose it.
            self.log.append([record])
            with self._cv:
                self.submitted += 1
                self.written += 1
                self._wake()
            return record.id
        with self._cv:
            self.submitted += 1
        self._q.put(record)
        return record.id

    def _run(self) -> None:
        stop = False
        while not stop:
            item = self._q.get()
            if item is _STOP:
                break
            batch = [item]
            deadline = time.monotonic() + self.max_wait_s
            while len(batch) < self.batch_size:
                try:
                    nxt = self._q.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    break
                if nxt is _STOP:
                    stop = True
                    break
                batch.append(nxt)
            self._write(batch, final=stop)
        # drain anything left after the stop marker
        rest = []
        while True:
            try:
                item = self._q.get_nowait()
            except queue.Empty:
                break
            if item is not _STOP:
                rest.append(item)
        if rest:
            self._write(rest, final=True)

    def _write(self, batch: list[Any], final: bool) -> None:
        delay = 0.05
        tries = 0
        while True:
            try:
                self.log.append(batch)
                with self._cv:
                    self.written += len(batch)
                    self._cv.notify_all()
                    self._wake()
                return
            except Exception as e:  # retried: a record is never dropped on a transient error
                tries += 1
                self.failed_batches += 1
                self.last_error = f"{type(e).__name__}: {e}"
                log.warning("call log write failed (try %d): %s", tries, self.last_error)
                if final and tries >= 5:
                    self._spill(batch)
                    return
                time.sleep(delay)
                delay = min(delay * 2, 2.0)

    def _spill(self, batch: list[Any]) -> None:
        from ..home import home

        path = self._unsent or (home() / "calls.unsent.jsonl")
        with open(path, "a", encoding="utf-8") as f:
            for r in batch:
                f.write(json.dumps({"type": type(r).__name__, **asdict(r)},
                                   default=_json_default, ensure_ascii=True) + "\n")
        with self._cv:
            self.written += len(batch)
            self._cv.notify_all()
            self._wake()
        log.error("call log unreachable at shutdown: %d records saved to %s", len(batch), path)

    def _wake(self) -> None:
        """Resolve the `committed` waiters whose records are written (called under ``_cv``)."""
        if not self._waiters:
            return
        keep = []
        for upto, loop, fut in self._waiters:
            if upto <= self.written:
                try:
                    loop.call_soon_threadsafe(_resolve, fut)
                except RuntimeError:  # that event loop is closed
                    pass
            else:
                keep.append((upto, loop, fut))
        self._waiters = keep

    async def committed(self, timeout: float = 30.0) -> bool:
        """Wait (without blocking the event loop) until every record submitted before this call
        is written; False on timeout. Records are written in submission order, so the count of
        written records reaching the count submitted now means this caller's are in."""
        with self._cv:
            upto = self.submitted
            if self.written >= upto:
                return True
            fut = asyncio.get_running_loop().create_future()
            self._waiters.append((upto, fut.get_loop(), fut))
        try:
            await asyncio.wait_for(fut, timeout)
            return True
        except asyncio.TimeoutError:
            return False
        finally:
            with self._cv:
                self._waiters = [w for w in self._waiters if w[2] is not fut]

    def flush(self, timeout: float = 30.0) -> bool:
        """Wait until every submitted record is written; False on timeout."""
        deadline = time.monotonic() + timeout
        with self._cv:
            while self.written < self.submitted:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cv.wait(left)
        return True

    def close(self, timeout: float = 30.0, *, close_log: bool = True) -> None:
        if self._closed:
            return
        self._closed = True
        self._q.put(_STOP)
        self._thread.join(timeout)
        if close_log:
            self.log.close()

    def stats(self) -> dict[str, Any]:
        return {"submitted": self.submitted, "written": self.written, "pending": self.pending,
                "failed_batches": self.failed_batches, "last_error": self.last_error}


def _resolve(fut: Any) -> None:
    if not fut.done():
        fut.set_result(True)
