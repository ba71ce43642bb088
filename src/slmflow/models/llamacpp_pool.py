"""The llama.cpp contexts a `LlamaCppModel` runs on: loading them, their thread counts, the pool
a request takes one from, and the shared base that serves every adapter of one model file.

Why a module of its own: llamacpp.py is the `Model` (prompt, generation, streaming); who owns a
context, how it is handed out and when it is freed is a separate job with its own locks, and the
weight converter (llamacpp_weights) and the token loop (llamacpp_engine) need its loading
helpers without importing the model.

Loading: one load at a time (`_LOAD_LOCK`; `_quiet_stderr` points the process's fd 2 at
/dev/null while llama.cpp prints its loading chatter, and two loads at once could leave it
there). Pool: each context has one worker thread of its own (`workers`) and waits in a
thread-safe queue (`free`) when idle, so a model works from any event loop and a context never
changes threads.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import queue
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Sequence

from ..errors import ConfigError, ModelLoadError
from .base import import_backend


def _import_llama_cpp():
    return import_backend("llama-cpp-python", "llamacpp", "llama_cpp")[0]


@contextlib.contextmanager
def _quiet_stderr():
    """llama.cpp prints model-loading chatter on fd 2; keep it unless loading fails."""
    try:
        fd = os.dup(2)
    except OSError:
        yield
        return
    with open(os.devnull, "w") as null:
        os.dup2(null.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(fd, 2)
            os.close(fd)


_LOAD_LOCK = threading.Lock()


def _env_count(name: str) -> int | None:
    """``$name`` as a count (at least 1); None when unset; not a number is a `ConfigError`."""
    env = os.environ.get(name)
    if not env:
        return None
    try:
        return max(1, int(env))
    except ValueError:
        raise ConfigError(f"{name} must be a number, got {env!r}", where=name) from None


def _cores_each(pool_size: int) -> int:
    """Every core, shared by the pool's contexts (at least 1 each)."""
    cores = os.cpu_count() or 1
    return max(1, cores // max(1, pool_size))


def default_threads(pool_size: int = 1) -> int:
    """Threads per llama.cpp context for decoding: ``$SLMFLOW_LLAMA_THREADS``, else every core,
    shared by the pool's contexts (at least 1).

    Measured on the 2-core machine, quiet: one decode step of the 135M model takes 9.5 ms on two
    threads and 17.5 ms on one (docs/benchmarks.md). The earlier default left a core free because
    ggml's worker threads spin while they wait for each other: next to a busy LoRA training, 11
    tokens took 31.8 s with 2 threads and 1.4 s with 1 thread. On a box shared with other heavy
    jobs, set ``SLMFLOW_LLAMA_THREADS=1``."""
    n = _env_count("SLMFLOW_LLAMA_THREADS")
    return n if n is not None else _cores_each(pool_size)


def default_threads_batch(pool_size: int = 1) -> int:
    """Threads for prompt evaluation (batches): ``$SLMFLOW_LLAMA_THREADS_BATCH``, else every core,
    shared by the pool's contexts. Prefill is compute-bound and scales with cores (measured in
    docs/benchmarks.md); the spin-wait penalty that keeps decode off the last core costs little
    on one long batch."""
    n = _env_count("SLMFLOW_LLAMA_THREADS_BATCH")
    if n is not None:
        return n
    if os.environ.get("SLMFLOW_LLAMA_THREADS"):
        return default_threads(pool_size)
    return _cores_each(pool_size)


def pool_of(llamas: Sequence[Any], name: str) -> tuple[queue.Queue, dict[int, ThreadPoolExecutor]]:
    """The free queue (every context in it) and one worker thread per context, by ``id``."""
    free: queue.Queue = queue.Queue()
    workers: dict[int, ThreadPoolExecutor] = {}
    for llm in llamas:
        free.put(llm)
        workers[id(llm)] = ThreadPoolExecutor(1, thread_name_prefix=f"llamacpp-{name}")
    return free, workers


def close_contexts(llamas: Sequence[Any], workers: dict[int, ThreadPoolExecutor]) -> None:
    """Free the contexts and let their worker threads go (not waiting for them)."""
    for llm in llamas:
        with contextlib.suppress(Exception):
            llm.close()
    for ex in workers.values():
        ex.shutdown(wait=False)


async def acquire(free: queue.Queue) -> Any:
    """A context from `free`, waited for off the event loop. A caller cancelled while it waits
    (a timeout, a client that went away) does not lose the context the waiting thread takes
    later: it goes back."""
    abandoned = threading.Event()

    def take() -> Any:
        llm = free.get()
        if abandoned.is_set():  # on this thread: works even once the caller's loop is gone
            free.put(llm)
            return None
        return llm

    fut = asyncio.get_running_loop().run_in_executor(None, take)
    try:
        return await asyncio.shield(fut)
    except asyncio.CancelledError:
        abandoned.set()

        def give_back(f: Any) -> None:  # taken before the flag was set
            if not f.cancelled() and f.exception() is None and f.result() is not None:
                free.put(f.result())
        fut.add_done_callback(give_back)
        raise


class _SharedBase:
    """One llama.cpp model (its weights loaded once) and its pool of contexts, shared by every
    fast-engine `LlamaCppModel` on the same file and context settings, whatever its adapter.

    Why: llama-cpp-python turns mmap off for a model given a ``lora_path`` and loads a private
    copy of the weights, so a workflow with a router adapter, an extractor adapter and the bare
    base held three copies. Measured on the support chain (2 cores, 480 MB L3): one decode step
    took 11.5 ms with one model in the process and 30-50 ms with the three copies evicting each
    other from cache. Here the base is loaded once (mmap'd) and each call sets its adapter on the
    context it got (``llama_set_adapters_lora``, a no-op when unchanged); KV states stay scoped by
    adapter (see `llamacpp_engine.LlamaSession.bind`)."""

    def __init__(self, owner: Any) -> None:
        self.llamas = [owner._new_llama(with_lora=False) for _ in range(owner.pool_size)]
        self.free, self.workers = pool_of(self.llamas, owner.info.name)
        self.sessions: dict[int, Any] = {}
        self.adapters: dict[str, Any] = {}
        self.users = 0
        self.lock = threading.Lock()

    def adapter(self, path: Path, where: str):
        """The adapter loaded on this base (once); a refused file is a `ModelLoadError`."""
        key = str(path.resolve())
        with self.lock:
            ptr = self.adapters.get(key)
            if ptr is None:
                llama_cpp = _import_llama_cpp()
                with _LOAD_LOCK, _quiet_stderr():
                    ptr = llama_cpp.llama_adapter_lora_init(self.llamas[0]._model.model,
                                                            key.encode("utf-8"))
                if not ptr:  # NULL, not None: llama.cpp refused it
                    raise ModelLoadError(f"llama.cpp refused the LoRA adapter {path}",
                                         where=where)
                self.adapters[key] = ptr
            return ptr

    def close(self) -> None:
        for sess in self.sessions.values():
            with contextlib.suppress(Exception):
                sess.close()
        llama_cpp = _import_llama_cpp()
        for ptr in self.adapters.values():
            with contextlib.suppress(Exception):
                llama_cpp.llama_adapter_lora_free(ptr)
        close_contexts(self.llamas, self.workers)


_BASES: dict[tuple, _SharedBase] = {}
_BASES_LOCK = threading.Lock()


def join_base(key: tuple, owner: Any) -> _SharedBase:
    """The shared base for `key` (made from `owner`, loading its contexts, when there is none),
    counted as one more user."""
    with _BASES_LOCK:
        base = _BASES.get(key)
        if base is None:
            base = _BASES[key] = _SharedBase(owner)
        base.users += 1
    return base


def leave_base(base: _SharedBase, key: tuple) -> None:
    """One user fewer; the last one closes the base (its contexts, adapters and sessions)."""
    with _BASES_LOCK:
        base.users -= 1
        if base.users <= 0 and _BASES.get(key) is base:
            del _BASES[key]
            base.close()
