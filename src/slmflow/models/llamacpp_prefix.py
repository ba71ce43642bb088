"""The KV-state store behind llama.cpp prefix reuse: states of earlier prompts, found by the
longest common token prefix.

Why a module of its own: the store is a data structure with its own lock and no llama.cpp call
in it (a state is an opaque blob the token loop saves and restores), shared by every context of
the process; llamacpp_engine is the loop that fills and reads it (see its docstring for why
prefixes are reused at all).

Entries are scoped (`file_scope`: model file, adapter file, context type): a state computed
under one LoRA adapter is never restored into another (the adapter changes K and V). Memory is
bounded: LRU by bytes (``SLMFLOW_PREFIX_CACHE_MB``, default 256), and an entry whose tokens are
a prefix of a newer entry's is dropped (the newer one serves every match the older one could).
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np


def _cache_bytes_default() -> int:
    env = os.environ.get("SLMFLOW_PREFIX_CACHE_MB")
    if env:
        try:
            return max(0, int(float(env) * 1024 * 1024))
        except ValueError:
            from ..errors import ConfigError

            raise ConfigError(f"SLMFLOW_PREFIX_CACHE_MB must be a number, got {env!r}",
                              where="SLMFLOW_PREFIX_CACHE_MB") from None
    return 256 * 1024 * 1024


def file_scope(*paths: Path | None) -> tuple:
    """What a KV state depends on: each file's resolved path, size and modification time (a
    replaced adapter file never reuses the states of the old one)."""
    out: list[Any] = []
    for p in paths:
        if p is None:
            out.append(None)
            continue
        st = Path(p).stat()
        out.append((str(Path(p).resolve()), st.st_size, st.st_mtime_ns))
    return tuple(out)


@dataclass
class _Entry:
    scope: tuple
    tokens: np.ndarray  # int32
    state: Any  # ctypes uint8 array
    nbytes: int


def _common_prefix(a: np.ndarray, b: np.ndarray) -> int:
    n = min(len(a), len(b))
    if n == 0:
        return 0
    neq = np.flatnonzero(a[:n] != b[:n])
    return int(neq[0]) if len(neq) else n


class PrefixCache:
    """KV states of earlier prompts, found by longest common token prefix; LRU by bytes."""

    def __init__(self, max_bytes: int | None = None) -> None:
        self.max_bytes = _cache_bytes_default() if max_bytes is None else max_bytes
        self._entries: OrderedDict[int, _Entry] = OrderedDict()
        self._next = 0
        self._bytes = 0
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0
        self.evictions = 0

    @property
    def nbytes(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._entries)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._bytes = 0

    def lookup(self, scope: tuple, tokens: np.ndarray) -> tuple[_Entry | None, int]:
        """The entry sharing the longest prefix with `tokens` in `scope`, and that length."""
        best, best_n = None, 0
        with self._lock:
            for key, e in self._entries.items():
                if e.scope != scope:
                    continue
                n = _common_prefix(e.tokens, tokens)
                if n > best_n:
                    best, best_n, best_key = e, n, key
            if best is not None:
                self._entries.move_to_end(best_key)
                self.hits += 1
            else:
                self.misses += 1
        return best, best_n

    def put(self, scope: tuple, tokens: np.ndarray, state: Any, nbytes: int) -> None:
        if nbytes > self.max_bytes:
            return
        with self._lock:
            # entries this one dominates (their tokens are a prefix of these) go
            for key in [k for k, e in self._entries.items()
                        if e.scope == scope and len(e.tokens) <= len(tokens)
                        and _common_prefix(e.tokens, tokens) == len(e.tokens)]:
                self._bytes -= self._entries.pop(key).nbytes
            self._entries[self._next] = _Entry(scope, tokens.copy(), state, nbytes)
            self._next += 1
            self._bytes += nbytes
            while self._bytes > self.max_bytes and self._entries:
                _, old = self._entries.popitem(last=False)
                self._bytes -= old.nbytes
                self.evictions += 1

    def dominated_by(self, scope: tuple, tokens: np.ndarray) -> bool:
        """True when an entry already holds `tokens` as (a prefix of) its own."""
        with self._lock:
            return any(e.scope == scope and len(e.tokens) >= len(tokens)
                       and _common_prefix(e.tokens, tokens) == len(tokens)
                       for e in self._entries.values())


_CACHE: PrefixCache | None = None
_CACHE_LOCK = threading.Lock()


def shared_cache() -> PrefixCache:
    """The process's prefix cache (sized by ``SLMFLOW_PREFIX_CACHE_MB`` on first use)."""
    global _CACHE
    with _CACHE_LOCK:
        if _CACHE is None:
            _CACHE = PrefixCache()
        return _CACHE
