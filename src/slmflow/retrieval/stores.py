"""Vector stores behind one small interface: `write`, `delete`, `search`, `count`.

* `EmbeddedStore` (default, no server): vectors live in the index's own SQLite file, written in the
  same transaction as the catalog (text, metadata, BM25), so a batch is all-or-nothing; an HNSW
  graph (usearch) is a derived accelerator, rebuilt from SQLite whenever its recorded generation
  differs from the catalog's (e.g. after a crash between commit and save). Below
  ``exact_below`` vectors it searches exactly with NumPy (faster than HNSW at that size, recall 1).
* `ChromaStore`: a Chroma server (``chroma run``) over HTTP, for vectors that outgrow one machine.
  Written before the catalog commits; on failure the written ids are deleted again (best effort),
  and the catalog never points at a vector that was not written; stray vectors are ignored because
  every hit is joined with the catalog.

Why this split and not LanceDB / sqlite-vec / Chroma-embedded: see docs/retrieval.md (measured).
"""

from __future__ import annotations

import json
import sqlite3
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

import numpy as np

from .errors import DimensionMismatchError, RetrievalError, StoreUnavailableError

__all__ = ["VectorStore", "EmbeddedStore", "ChromaStore", "resolve_store"]


class VectorStore(ABC):
    """Integer-keyed unit vectors; ``search`` returns ``[(key, cosine similarity)]`` best first."""

    kind: str = "store"
    in_transaction: bool = False  # True: write/delete run inside the catalog's SQLite transaction

    def attach(self, index_dir: Path, conn: sqlite3.Connection, name: str, dim: int,
               generation: int) -> None:
        """Bind to an index (called once, before any other method)."""

    @abstractmethod
    def write(self, keys: np.ndarray, vectors: np.ndarray) -> None: ...

    @abstractmethod
    def delete(self, keys: list[int]) -> None: ...

    @abstractmethod
    def search(self, vector: np.ndarray, k: int,
               allowed: list[int] | None = None) -> list[tuple[int, float]]: ...

    @abstractmethod
    def count(self) -> int: ...

    def committed(self, generation: int, added: tuple[np.ndarray, np.ndarray] | None,
                  deleted: list[int]) -> None:
        """The catalog committed: update derived state."""

    def rollback(self, keys: np.ndarray) -> None:
        """The catalog did not commit: undo `write` of ``keys`` (for stores outside the txn)."""

    def flush(self) -> None: ...

    def close(self) -> None:
        self.flush()

    def describe(self) -> str:
        return self.kind


class EmbeddedStore(VectorStore):
    kind = "embedded"
    in_transaction = True

    def __init__(self, *, exact_below: int = 5000, connectivity: int = 16,
                 expansion_add: int = 128, expansion_search: int = 96) -> None:
        self.exact_below = exact_below
        self.params = dict(connectivity=connectivity, expansion_add=expansion_add,
                           expansion_search=expansion_search)
        self._hnsw: Any = None
        self._matrix: tuple[np.ndarray, np.ndarray] | None = None  # (keys, vectors) exact mode
        self._dirty = False
        self.conn: sqlite3.Connection | None = None

    def attach(self, index_dir: Path, conn: sqlite3.Connection, name: str, dim: int,
               generation: int) -> None:
        self.dir, self.conn, self.dim, self.generation = index_dir, conn, dim, generation
        conn.execute("CREATE TABLE IF NOT EXISTS vectors (key INTEGER PRIMARY KEY, vec BLOB NOT NULL)")
        self._hnsw_path = index_dir / "hnsw.usearch"
        self._hnsw_meta = index_dir / "hnsw.json"

    def write(self, keys: np.ndarray, vectors: np.ndarray) -> None:
        assert self.conn is not None
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if self.dim and vectors.shape[1] != self.dim:
            raise DimensionMismatchError(f"store holds {self.dim}-d vectors, got "
                                         f"{vectors.shape[1]}-d", where=str(self.dir))
        self.conn.executemany("INSERT INTO vectors (key, vec) VALUES (?, ?)",
                              [(int(k), v.tobytes()) for k, v in zip(keys, vectors)])

    def delete(self, keys: list[int]) -> None:
        assert self.conn is not None
        for i in range(0, len(keys), 500):
            part = keys[i:i + 500]
            self.conn.execute(f"DELETE FROM vectors WHERE key IN ({','.join('?' * len(part))})",
                              part)

    def count(self) -> int:
        assert self.conn is not None
        return self.conn.execute("SELECT COUNT(*) FROM vectors").fetchone()[0]

    def _load_all(self) -> tuple[np.ndarray, np.ndarray]:
        assert self.conn is not None
        rows = self.conn.execute("SELECT key, vec FROM vectors ORDER BY key").fetchall()
        keys = np.array([r[0] for r in rows], dtype=np.int64)
        vecs = (np.frombuffer(b"".join(r[1] for r in rows), dtype=np.float32).reshape(-1, self.dim)
                if rows else np.zeros((0, self.dim), dtype=np.float32))
        return keys, vecs

    def vectors_for(self, keys: list[int]) -> tuple[np.ndarray, np.ndarray]:
        assert self.conn is not None
        out_k, out_v = [], []
        for i in range(0, len(keys), 900):
            part = keys[i:i + 900]
            for k, b in self.conn.execute(
                    f"SELECT key, vec FROM vectors WHERE key IN ({','.join('?' * len(part))})", part):
                out_k.append(k)
                out_v.append(np.frombuffer(b, dtype=np.float32))
        if not out_k:
            return np.zeros(0, dtype=np.int64), np.zeros((0, self.dim), dtype=np.float32)
        return np.array(out_k, dtype=np.int64), np.stack(out_v)

    def _new_hnsw(self) -> Any:
        from usearch.index import Index as UIndex

        return UIndex(ndim=self.dim, metric="cos", dtype="f32", **self.params)

    def _ensure(self) -> None:
        if self._hnsw is not None or self._matrix is not None:
            return
        n = self.count()
        if n < self.exact_below:
            self._matrix = self._load_all()
            return
        meta = {}
        if self._hnsw_meta.exists():
            try:
                meta = json.loads(self._hnsw_meta.read_text())
            except ValueError:
                meta = {}
        if (self._hnsw_path.exists() and meta.get("generation") == self.generation
                and meta.get("count") == n):
            ix = self._new_hnsw()
            try:
                ix.load(str(self._hnsw_path))
                if len(ix) == n:
                    self._hnsw = ix
                    return
            except Exception:
                pass
        keys, vecs = self._load_all()  # rebuild: the SQLite rows are the truth
        ix = self._new_hnsw()
        if len(keys):
            ix.add(keys, vecs)
        self._hnsw, self._dirty = ix, True

    def committed(self, generation: int, added: tuple[np.ndarray, np.ndarray] | None,
                  deleted: list[int]) -> None:
        self.generation = generation
        if self._matrix is not None:
            self._matrix = None  # reload lazily (cheap below exact_below)
        if self._hnsw is not None:
            if deleted:
                self._hnsw.remove(np.array(deleted, dtype=np.int64))
            if added is not None and len(added[0]):
                self._hnsw.add(added[0], added[1])
            self._dirty = True
        elif self._hnsw_meta.exists():
            self._hnsw_meta.unlink()  # stale now; rebuilt on the next search

    def search(self, vector: np.ndarray, k: int,
               allowed: list[int] | None = None) -> list[tuple[int, float]]:
        if allowed is not None:
            keys, vecs = self.vectors_for(allowed)
            return _topk(keys, vecs, vector, k)
        self._ensure()
        if self._matrix is not None:
            return _topk(*self._matrix, vector, k)
        n = len(self._hnsw)
        if n == 0:
            return []
        m = self._hnsw.search(np.asarray(vector, dtype=np.float32), min(k, n))
        return [(int(key), 1.0 - float(d)) for key, d in zip(m.keys, m.distances)]

    def flush(self) -> None:
        if self._hnsw is not None and self._dirty:
            tmp = self._hnsw_path.with_suffix(".tmp")
            self._hnsw.save(str(tmp))
            tmp.replace(self._hnsw_path)
            self._hnsw_meta.write_text(json.dumps({"generation": self.generation,
                                                   "count": len(self._hnsw)}))
            self._dirty = False

    def describe(self) -> str:
        return "embedded (SQLite + usearch HNSW)"


def _topk(keys: np.ndarray, vecs: np.ndarray, q: np.ndarray, k: int) -> list[tuple[int, float]]:
    if len(keys) == 0:
        return []
    sims = vecs @ np.asarray(q, dtype=np.float32)
    k = min(k, len(keys))
    idx = np.argpartition(-sims, k - 1)[:k]
    idx = idx[np.argsort(-sims[idx])]
    return [(int(keys[i]), float(sims[i])) for i in idx]


class ChromaStore(VectorStore):
    """A collection on a Chroma server: ``ChromaStore("http://127.0.0.1:8000")``."""

    kind = "chroma"

    def __init__(self, url: str = "http://127.0.0.1:8000", *, collection: str | None = None,
                 timeout: float = 30.0) -> None:
        from urllib.parse import urlparse

        u = urlparse(url if "://" in url else f"http://{url}")
        self.url = f"{u.scheme}://{u.hostname}:{u.port or 8000}"
        self.host, self.port, self.ssl = u.hostname or "127.0.0.1", u.port or 8000, u.scheme == "https"
        self.collection_name = collection
        self.timeout = timeout
        self._col: Any = None

    def _call(self, what: str, fn: Any, *a: Any, **kw: Any) -> Any:
        try:
            return fn(*a, **kw)
        except RetrievalError:
            raise
        except Exception as e:
            msg = str(e) or type(e).__name__
            if any(s in msg.lower() for s in ("connect", "refused", "timed out", "timeout",
                                               "unreachable", "name or service")) \
                    or type(e).__name__ in ("ConnectError", "ConnectTimeout", "ReadTimeout"):
                raise StoreUnavailableError(f"Chroma server unreachable during {what}: {msg}",
                                            where=self.url) from None
            raise StoreUnavailableError(f"Chroma server failed {what}: {type(e).__name__}: {msg}",
                                        where=self.url) from None

    def attach(self, index_dir: Path, conn: sqlite3.Connection, name: str, dim: int,
               generation: int) -> None:
        try:
            import chromadb
        except ImportError:  # pragma: no cover
            from ..errors import BackendUnavailableError

            raise BackendUnavailableError("the Chroma store needs chromadb: pip install "
                                          "'slmflow[retrieval]'", where=self.url) from None
        self.dim = dim
        name = self.collection_name or f"slmflow-{name}"
        self.collection_name = name

        def connect() -> Any:
            from chromadb.config import Settings

            client = chromadb.HttpClient(host=self.host, port=self.port, ssl=self.ssl,
                                         settings=Settings(anonymized_telemetry=False))
            return client.get_or_create_collection(
                name, metadata={"hnsw:space": "cosine", "slmflow.dim": dim})

        self._col = self._call("connect", connect)
        have = (self._col.metadata or {}).get("slmflow.dim")
        if have and int(have) != dim:
            raise DimensionMismatchError(
                f"Chroma collection {name!r} holds {have}-d vectors, this index uses {dim}-d",
                where=self.url)

    def write(self, keys: np.ndarray, vectors: np.ndarray) -> None:
        if vectors.shape[1] != self.dim:
            raise DimensionMismatchError(f"store holds {self.dim}-d vectors, got "
                                         f"{vectors.shape[1]}-d", where=self.url)
        for i in range(0, len(keys), 1000):
            ks = keys[i:i + 1000]
            self._call("write", self._col.upsert, ids=[str(int(k)) for k in ks],
                       embeddings=vectors[i:i + 1000].astype(np.float32),
                       metadatas=[{"key": int(k)} for k in ks])

    def delete(self, keys: list[int]) -> None:
        for i in range(0, len(keys), 1000):
            self._call("delete", self._col.delete, ids=[str(int(k)) for k in keys[i:i + 1000]])

    def rollback(self, keys: np.ndarray) -> None:
        try:
            self.delete([int(k) for k in keys])
        except RetrievalError:
            pass  # stray vectors are harmless: hits are joined with the catalog

    def count(self) -> int:
        return int(self._call("count", self._col.count))

    def search(self, vector: np.ndarray, k: int,
               allowed: list[int] | None = None) -> list[tuple[int, float]]:
        kw: dict[str, Any] = {}
        if allowed is not None:
            if not allowed:
                return []
            kw["where"] = {"key": {"$in": [int(a) for a in allowed]}}
            k = min(k, len(allowed))
        r = self._call("query", self._col.query, query_embeddings=[np.asarray(vector, np.float32)],
                       n_results=max(1, k), include=["distances"], **kw)
        ids, dist = r["ids"][0], r["distances"][0]
        return [(int(i), 1.0 - float(d)) for i, d in zip(ids, dist)]

    def drop(self) -> None:
        """Delete the whole collection on the server."""
        import chromadb
        from chromadb.config import Settings

        client = chromadb.HttpClient(host=self.host, port=self.port, ssl=self.ssl,
                                     settings=Settings(anonymized_telemetry=False))
        self._call("drop", client.delete_collection, self.collection_name)

    def describe(self) -> str:
        return f"chroma server {self.url} collection {self.collection_name}"


def resolve_store(spec: str | VectorStore | None) -> VectorStore:
    """``None``/``"embedded"`` → `EmbeddedStore`; ``"chroma://host:port[/collection]"`` (or
    ``chroma+https://...``) → `ChromaStore`."""
    if isinstance(spec, VectorStore):
        return spec
    if spec in (None, "", "embedded"):
        return EmbeddedStore()
    if isinstance(spec, str) and spec.startswith(("chroma://", "chroma+http://", "chroma+https://")):
        rest = spec.split("://", 1)[1]
        scheme = "https" if spec.startswith("chroma+https") else "http"
        hostport, _, collection = rest.partition("/")
        return ChromaStore(f"{scheme}://{hostport}", collection=collection or None)
    from ..errors import ConfigError

    raise ConfigError(f"unknown store {spec!r} (use 'embedded' or 'chroma://host:port')",
                      where="store")
