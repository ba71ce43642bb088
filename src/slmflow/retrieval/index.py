"""`Index`: a folder under ``$SLMFLOW_HOME/indexes/<name>/`` with a SQLite catalog and a store.

The catalog (``index.db``) holds documents (source, content hash, size, mtime), chunks (stable id
``<doc id>#<position>``, text, offsets, metadata), an FTS5 table for BM25, and, with the embedded
store, the vectors. Vector keys are fresh integers per written chunk (never reused), so a vector
can never be mistaken for another chunk's.

Write path (`add`, `add_documents`, `remove`), per batch of at most ``batch_chunks`` chunks:
read + chunk → embed all (nothing written yet: a bad file, a down embedding server or a dimension
mismatch stops here) → store.write → one SQLite transaction → commit → store.committed. Any error
before the commit rolls the catalog back and undoes the store write, so a batch is all or nothing.

Search: ``mode="hybrid"`` (default) fuses the vector ranking and the BM25 ranking with reciprocal
rank fusion (``1/(60 + rank)``); ``"vector"`` and ``"bm25"`` give either alone. ``filters``:
``{"source": "glob*"}``, ``{"doc_id": ...}`` and any metadata ``key: value`` (a list = any of).

Why one module of ~580 lines: it is one job, the `Index` class over one catalog; the write path
and the search share its connection, its chunk keys and its vector store, and the all-or-nothing
batch holds only while one object owns all three.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from .. import tracing
from ..errors import ConfigError
from .embedder import Embedder, resolve_embedder
from .errors import DimensionMismatchError, DuplicateIdError, IngestError, RetrievalError
from .ingest import SUPPORTED, Chunker, read_text
from .stores import VectorStore, resolve_store
from .types import Document, Passage, Passages

__all__ = ["Index", "IndexReport", "list_indexes", "RRF_K"]

RRF_K = 60
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS docs (
  doc_id TEXT PRIMARY KEY, source TEXT NOT NULL, hash TEXT NOT NULL, size INTEGER, mtime_ns INTEGER,
  n_chunks INTEGER NOT NULL, metadata TEXT NOT NULL DEFAULT '{}', from_file INTEGER NOT NULL,
  indexed_at REAL NOT NULL);
CREATE INDEX IF NOT EXISTS docs_source ON docs(source);
CREATE TABLE IF NOT EXISTS chunks (
  key INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL UNIQUE, doc_id TEXT NOT NULL,
  position INTEGER NOT NULL, text TEXT NOT NULL, start INTEGER, end INTEGER, tokens INTEGER);
CREATE INDEX IF NOT EXISTS chunks_doc ON chunks(doc_id);
CREATE VIRTUAL TABLE IF NOT EXISTS fts USING fts5(text, tokenize='porter unicode61');
"""


@dataclass
class IndexReport:
    """What one `add` did."""

    added: list[str] = field(default_factory=list)      # new documents
    updated: list[str] = field(default_factory=list)    # changed documents, re-indexed
    unchanged: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)    # gone from disk, removed from the index
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)
    chunks: int = 0
    seconds: float = 0.0

    @property
    def chunks_per_s(self) -> float:
        return self.chunks / self.seconds if self.seconds else 0.0


def _hash(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


def list_indexes() -> list[str]:
    from ..home import subdir

    return sorted(p.name for p in subdir("indexes").iterdir() if (p / "index.db").exists())


class Index:
    """A retrieval index: ``Index("docs").add(["./docs"])``, ``.search("how do refunds work")``."""

    def __init__(self, name: str = "default", *, path: str | Path | None = None,
                 embedder: str | Embedder | None = None, store: str | VectorStore | None = None,
                 chunk_size: int | None = None, overlap: int | None = None,
                 batch_chunks: int = 2048) -> None:
        if path is None:
            if not _NAME.match(name):
                raise ConfigError(f"index name {name!r}: letters, digits, '_', '-', '.' only",
                                  where="index")
            from ..home import subdir

            path = subdir("indexes") / name
        self.name = name
        self.dir = Path(path)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.conn = sqlite3.connect(self.dir / "index.db", timeout=30, isolation_level=None,
                                    check_same_thread=False)
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute("PRAGMA synchronous=NORMAL")
        self.conn.executescript(_SCHEMA)
        meta = self._meta()
        self.embedder = resolve_embedder(embedder if embedder is not None else meta.get("embedder"))
        # a new index's vectors go where $SLMFLOW_VECTOR_STORE says (slmflow.scale.config)
        store_spec = store if store is not None else (meta.get("store")
                                                      or os.environ.get("SLMFLOW_VECTOR_STORE"))
        self.store = resolve_store(store_spec)
        self.chunker = Chunker(int(chunk_size or meta.get("chunk_size", 200)),
                               int(overlap if overlap is not None else meta.get("overlap", 40)))
        self.batch_chunks = batch_chunks
        self.dim = int(meta["dim"]) if "dim" in meta else 0
        if self.dim and meta.get("embedder_name") and self.embedder.dim and \
                self.embedder.dim != self.dim:
            raise DimensionMismatchError(
                f"index {name!r} was built with {meta['embedder_name']} ({self.dim}-d); embedder "
                f"{self.embedder.name} gives {self.embedder.dim}-d vectors: re-create the index",
                where=str(self.dir))
        if not meta.get("store"):
            self._set_meta(store=self._store_spec(store_spec), chunk_size=self.chunker.size,
                           overlap=self.chunker.overlap)
        if isinstance(embedder, str) or (embedder is None and "embedder" not in meta):
            self._set_meta(embedder=embedder or "minilm")
        self._attached = False
        if self.dim:
            self._attach()

    # ---------------------------------------------------------------- meta
    def _store_spec(self, spec: Any) -> str:
        if isinstance(spec, str):
            return spec
        if spec is None:
            return "embedded"
        from .stores import ChromaStore

        if isinstance(spec, ChromaStore):
            return ("chroma://" + spec.url.split("://", 1)[1]
                    + (f"/{spec.collection_name}" if spec.collection_name else ""))
        return spec.kind

    def _meta(self) -> dict[str, str]:
        return dict(self.conn.execute("SELECT key, value FROM meta").fetchall())

    def _set_meta(self, **kv: Any) -> None:
        self.conn.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)",
                              [(k, str(v)) for k, v in kv.items()])

    @property
    def generation(self) -> int:
        return int(self._meta().get("generation", 0))

    def _attach(self) -> None:
        if not self._attached:
            self.store.attach(self.dir, self.conn, self.name, self.dim, self.generation)
            self._attached = True

    # ---------------------------------------------------------------- write path
    def _embed(self, texts: list[str]) -> np.ndarray:
        vecs = self.embedder.embed(texts)
        if vecs.ndim != 2 or len(vecs) != len(texts):
            raise RetrievalError(f"embedder returned shape {vecs.shape} for {len(texts)} texts",
                                 where=self.embedder.name)
        if self.dim and vecs.shape[1] != self.dim:
            raise DimensionMismatchError(
                f"embedder {self.embedder.name} gives {vecs.shape[1]}-d vectors; index "
                f"{self.name!r} holds {self.dim}-d: use the index's embedder or re-create it",
                where=str(self.dir))
        return vecs

    def _commit_batch(self, items: list[tuple[dict[str, Any], list[Any]]], vecs: np.ndarray,
                      replace_doc_ids: list[str]) -> None:
        """One atomic batch: items = [(doc row, chunks)], vecs aligned with all chunks."""
        if not self.dim:
            self.dim = int(vecs.shape[1]) if len(vecs) else int(self.embedder.dim or 0)
            if not self.dim:
                return
            try:
                self._attach()  # may refuse this dimension (a server collection made elsewhere)
            except BaseException:
                self.dim, self._attached = 0, False
                raise
            self._set_meta(dim=self.dim, embedder_name=self.embedder.name)
        c = self.conn
        start_key = (c.execute("SELECT seq FROM sqlite_sequence WHERE name='chunks'").fetchone()
                     or (0,))[0]
        n = len(vecs)
        keys = np.arange(start_key + 1, start_key + 1 + n, dtype=np.int64)
        wrote_outside = False
        c.execute("BEGIN IMMEDIATE")
        try:
            old_keys: list[int] = []
            for i in range(0, len(replace_doc_ids), 500):
                part = replace_doc_ids[i:i + 500]
                ph = ",".join("?" * len(part))
                old = c.execute(f"SELECT key, text FROM chunks WHERE doc_id IN ({ph})", part).fetchall()
                old_keys += [k for k, _ in old]
                c.executemany("DELETE FROM fts WHERE rowid = ?", [(k,) for k, _ in old])
                c.execute(f"DELETE FROM chunks WHERE doc_id IN ({ph})", part)
                c.execute(f"DELETE FROM docs WHERE doc_id IN ({ph})", part)
            if self.store.in_transaction and old_keys:
                self.store.delete(old_keys)
            now = time.time()
            j = 0
            rows, fts_rows = [], []
            for doc, chunks in items:
                c.execute("INSERT INTO docs VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                          (doc["doc_id"], doc["source"], doc["hash"], doc.get("size"),
                           doc.get("mtime_ns"), len(chunks), json.dumps(doc.get("metadata") or {}),
                           int(doc.get("from_file", 0)), now))
                for ch in chunks:
                    k = int(keys[j])
                    rows.append((k, f"{doc['doc_id']}#{ch.position}", doc["doc_id"], ch.position,
                                 ch.text, ch.start, ch.end, ch.tokens))
                    fts_rows.append((k, ch.text))
                    j += 1
            c.executemany("INSERT INTO chunks VALUES (?, ?, ?, ?, ?, ?, ?, ?)", rows)
            c.executemany("INSERT INTO fts(rowid, text) VALUES (?, ?)", fts_rows)
            if n:
                if not self.store.in_transaction:
                    wrote_outside = True
                self.store.write(keys, vecs)
            if n:  # keep AUTOINCREMENT's counter right even if rows were given explicit keys
                c.execute("UPDATE sqlite_sequence SET seq = MAX(seq, ?) WHERE name='chunks'",
                          (int(keys[-1]),))
            gen = self.generation + 1
            c.execute("INSERT OR REPLACE INTO meta VALUES ('generation', ?)", (str(gen),))
            c.execute("COMMIT")
        except BaseException:
            c.execute("ROLLBACK")
            if wrote_outside:
                self.store.rollback(keys)
            raise
        if not self.store.in_transaction and old_keys:
            try:
                self.store.delete(old_keys)
            except RetrievalError:
                pass  # stray vectors are never returned (hits are joined with the catalog)
        self.store.committed(gen, (keys, vecs) if n else None, old_keys)

    def _files(self, paths: Iterable[str | Path]) -> tuple[list[Path], list[Path], list[tuple[str, str]]]:
        files, roots, skipped = [], [], []
        for p in paths:
            p = Path(p).expanduser()
            if p.is_dir():
                roots.append(p.resolve())
                for f in sorted(p.rglob("*")):
                    rel = f.relative_to(p)
                    if any(part.startswith(".") for part in rel.parts):
                        continue
                    if f.is_file() and f.suffix.lower() in SUPPORTED:
                        files.append(f.resolve())
            elif p.is_file():
                files.append(p.resolve())
            else:
                skipped.append((str(p), "not found"))
        return list(dict.fromkeys(files)), roots, skipped

    def add(self, paths: str | Path | Sequence[str | Path], *, strict: bool = False,
            metadata: dict[str, Any] | None = None,
            progress: Callable[[str, int, int], None] | None = None) -> IndexReport:
        """Index files and folders; only new or changed files are (re-)embedded; files gone from
        an added folder are removed. Bad files are skipped with a reason (``strict``: raise
        `IngestError` before writing anything). ``progress(stage, done, total)``."""
        if isinstance(paths, (str, Path)):
            paths = [paths]
        t0 = time.perf_counter()
        rep = IndexReport()
        files, roots, missing = self._files(paths)
        rep.skipped += missing
        if strict and missing:
            raise IngestError(f"not found: {missing[0][0]}", where=missing[0][0])
        known = {r[0]: r for r in self.conn.execute(
            "SELECT doc_id, hash, size, mtime_ns FROM docs WHERE from_file = 1")}
        todo: list[tuple[dict[str, Any], list[Any]]] = []
        replace: list[str] = []
        for i, f in enumerate(files):
            if progress:
                progress("read", i, len(files))
            doc_id = f.as_posix()
            try:
                st = f.stat()
                prev = known.get(doc_id)
                if prev and prev[2] == st.st_size and prev[3] == st.st_mtime_ns:
                    rep.unchanged.append(doc_id)
                    continue
                raw_hash = _hash(f.read_bytes())
                if prev and prev[1] == raw_hash:
                    self.conn.execute("UPDATE docs SET size = ?, mtime_ns = ? WHERE doc_id = ?",
                                      (st.st_size, st.st_mtime_ns, doc_id))
                    rep.unchanged.append(doc_id)
                    continue
                text = read_text(f)
                chunks = self.chunker(text)
                if not chunks:
                    raise IngestError("empty document (no tokens)", where=str(f))
            except IngestError as e:
                if strict:
                    raise
                rep.skipped.append((str(f), e.message))
                continue
            except OSError as e:
                if strict:
                    raise IngestError(f"cannot read: {e}", where=str(f)) from None
                rep.skipped.append((str(f), f"cannot read: {e.strerror or e}"))
                continue
            (rep.updated if prev else rep.added).append(doc_id)
            if prev:
                replace.append(doc_id)
            todo.append(({"doc_id": doc_id, "source": doc_id, "hash": raw_hash,
                          "size": st.st_size, "mtime_ns": st.st_mtime_ns,
                          "metadata": {"suffix": f.suffix.lower().lstrip("."), **(metadata or {})},
                          "from_file": 1}, chunks))
        if progress:
            progress("read", len(files), len(files))
        # deletions: files that were indexed under an added folder and are gone now
        present = {f.as_posix() for f in files}
        gone = [d for d in known if d not in present and any(
            d.startswith(r.as_posix().rstrip("/") + "/") for r in roots) and not Path(d).exists()]
        with tracing.span("retrieval", f"index {self.name}", attributes={
                "slmflow.retrieval.index": self.name, "slmflow.retrieval.files": len(files),
                "slmflow.retrieval.changed": len(todo), "slmflow.retrieval.deleted": len(gone)}):
            rep.chunks = self._write(todo, replace, progress)
            if gone:
                self.remove(gone)
                rep.deleted = gone
        self.store.flush()
        rep.seconds = time.perf_counter() - t0
        return rep

    def _write(self, todo: list[tuple[dict[str, Any], list[Any]]], replace: list[str],
               progress: Callable[[str, int, int], None] | None) -> int:
        total = sum(len(ch) for _, ch in todo)
        done = 0
        batch: list[tuple[dict[str, Any], list[Any]]] = []
        size = 0
        replace_set = set(replace)

        def flush() -> None:
            nonlocal batch, size, done
            if not batch:
                return
            texts = [c.text for _, chs in batch for c in chs]
            vecs = self._embed(texts) if texts else np.zeros((0, self.dim or 0), np.float32)
            self._commit_batch(batch, vecs,
                               [d["doc_id"] for d, _ in batch if d["doc_id"] in replace_set])
            done += len(texts)
            if progress:
                progress("embed", done, total)
            batch, size = [], 0

        for doc, chunks in todo:
            if size and size + len(chunks) > self.batch_chunks:
                flush()
            batch.append((doc, chunks))
            size += len(chunks)
        flush()
        return total

    def add_documents(self, docs: Sequence[Document | dict[str, Any]], *,
                      on_conflict: str = "error") -> IndexReport:
        """Index texts given in memory. Ids must be unique in the batch; an id already in the
        index raises `DuplicateIdError` unless ``on_conflict="replace"``. All or nothing."""
        t0 = time.perf_counter()
        docs = [d if isinstance(d, Document) else Document(**d) for d in docs]
        seen: set[str] = set()
        for d in docs:
            if d.id in seen:
                raise DuplicateIdError(f"document id {d.id!r} occurs twice in the batch",
                                       where=f"index {self.name}")
            seen.add(d.id)
        existing = set()
        ids = list(seen)
        for i in range(0, len(ids), 500):
            part = ids[i:i + 500]
            existing |= {r[0] for r in self.conn.execute(
                f"SELECT doc_id FROM docs WHERE doc_id IN ({','.join('?' * len(part))})", part)}
        if existing and on_conflict != "replace":
            raise DuplicateIdError(f"document id {sorted(existing)[0]!r} is already in the index "
                                   f"({len(existing)} of the batch); pass on_conflict='replace'",
                                   where=f"index {self.name}")
        rep = IndexReport()
        todo = []
        for d in docs:
            if not d.text.strip():
                raise IngestError(f"empty document {d.id!r}", where=f"index {self.name}")
            chunks = self.chunker(d.text)
            todo.append(({"doc_id": d.id, "source": d.source or d.id, "hash": _hash(d.text.encode()),
                          "metadata": d.metadata, "from_file": 0}, chunks))
            (rep.updated if d.id in existing else rep.added).append(d.id)
        # all or nothing across the whole call: one batch
        saved, self.batch_chunks = self.batch_chunks, 10 ** 9
        try:
            rep.chunks = self._write(todo, list(existing), None)
        finally:
            self.batch_chunks = saved
        self.store.flush()
        rep.seconds = time.perf_counter() - t0
        return rep

    def remove(self, doc_ids_or_paths: Sequence[str | Path]) -> list[str]:
        """Remove documents (by id, or by path / folder of indexed files). Returns removed ids."""
        ids: list[str] = []
        for x in doc_ids_or_paths:
            s = str(x)
            hit = self.conn.execute("SELECT doc_id FROM docs WHERE doc_id = ?", (s,)).fetchone()
            if hit:
                ids.append(hit[0])
                continue
            p = Path(s).expanduser().resolve().as_posix()
            ids += [r[0] for r in self.conn.execute(
                "SELECT doc_id FROM docs WHERE doc_id = ? OR doc_id LIKE ? ESCAPE '\\'",
                (p, p.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "/%"))]
        ids = list(dict.fromkeys(ids))
        if ids:
            self._commit_batch([], np.zeros((0, self.dim or 1), np.float32), ids)
            self.store.flush()
        return ids

    # ---------------------------------------------------------------- read path
    def _allowed(self, filters: dict[str, Any] | None) -> list[int] | None:
        if not filters:
            return None
        where, args = [], []
        for key, val in filters.items():
            vals = val if isinstance(val, (list, tuple, set)) else [val]
            if key == "source":
                where.append("(" + " OR ".join("d.source GLOB ?" for _ in vals) + ")")
                args += [v if any(ch in str(v) for ch in "*?[") else f"*{v}" for v in vals]
            elif key == "doc_id":
                where.append(f"d.doc_id IN ({','.join('?' * len(vals))})")
                args += [str(v) for v in vals]
            else:
                if not re.fullmatch(r"[A-Za-z0-9_.-]+", key):
                    raise ConfigError(f"bad filter key {key!r}", where="filters")
                where.append("(" + " OR ".join(
                    "CAST(json_extract(d.metadata, ?) AS TEXT) = ?" for _ in vals) + ")")
                for v in vals:
                    args += [f'$."{key}"', str(v).lower() if isinstance(v, bool) else str(v)]
        q = ("SELECT c.key FROM chunks c JOIN docs d ON d.doc_id = c.doc_id WHERE "
             + " AND ".join(where))
        return [r[0] for r in self.conn.execute(q, args)]

    def _bm25(self, query: str, k: int, allowed: list[int] | None) -> list[tuple[int, float]]:
        words = re.findall(r"\w+", query.lower())
        if not words:
            return []
        match = " OR ".join(f'"{w}"' for w in dict.fromkeys(words))
        if allowed is None:
            rows = self.conn.execute("SELECT rowid, bm25(fts) FROM fts WHERE fts MATCH ? "
                                     "ORDER BY bm25(fts) LIMIT ?", (match, k)).fetchall()
        else:
            if not allowed:
                return []
            self.conn.execute("CREATE TEMP TABLE IF NOT EXISTS allowed (key INTEGER PRIMARY KEY)")
            self.conn.execute("DELETE FROM allowed")
            self.conn.executemany("INSERT INTO allowed VALUES (?)", [(a,) for a in allowed])
            rows = self.conn.execute(
                "SELECT rowid, bm25(fts) FROM fts WHERE fts MATCH ? AND rowid IN "
                "(SELECT key FROM allowed) ORDER BY bm25(fts) LIMIT ?", (match, k)).fetchall()
        return [(int(r), -float(s)) for r, s in rows]

    def _vector(self, query: str, k: int, allowed: list[int] | None) -> list[tuple[int, float]]:
        if not self.dim:
            return []
        self._attach()
        q = self._embed([query])[0]
        if allowed is not None and len(allowed) <= 50_000:
            return self.store.search(q, k, allowed=allowed)
        hits = self.store.search(q, k if allowed is None else k * 8)
        if allowed is not None:
            s = set(allowed)
            hits = [h for h in hits if h[0] in s]
        return hits[:k]

    def search(self, query: str, k: int = 5, *, mode: str = "hybrid",
               filters: dict[str, Any] | None = None, candidates: int | None = None) -> Passages:
        """Ranked passages for ``query``: ids, text, source, fused score (see module doc)."""
        if mode not in ("hybrid", "vector", "bm25"):
            raise ConfigError(f"mode {mode!r}: use hybrid, vector or bm25", where="search")
        n = candidates or max(4 * k, 20)
        with tracing.span("retrieval", self.name, attributes={
                "slmflow.retrieval.index": self.name, "slmflow.retrieval.mode": mode,
                "slmflow.retrieval.k": k, "slmflow.retrieval.store": self.store.kind,
                "slmflow.retrieval.filters": json.dumps(filters) if filters else None}) as sp:
            allowed = self._allowed(filters)
            vec = self._vector(query, n if mode == "hybrid" else k, allowed) \
                if mode in ("hybrid", "vector") else []
            kw = self._bm25(query, n if mode == "hybrid" else k, allowed) \
                if mode in ("hybrid", "bm25") else []
            vs, bs = dict(vec), dict(kw)
            if mode == "vector":
                ranked = vec[:k]
            elif mode == "bm25":
                ranked = kw[:k]
            else:
                fused: dict[int, float] = {}
                for lst in (vec, kw):
                    for r, (key, _) in enumerate(lst, 1):
                        fused[key] = fused.get(key, 0.0) + 1.0 / (RRF_K + r)
                ranked = sorted(fused.items(), key=lambda kv: -kv[1])[:k]
            out = self._passages(ranked, vs, bs)
            tracing.set_attributes(sp, {"slmflow.retrieval.passage_ids": [p.id for p in out] or None,
                                        "slmflow.retrieval.scores": [p.score for p in out] or None})
        return Passages(query=query, mode=mode, passages=out)

    def _passages(self, ranked: list[tuple[int, float]], vs: dict[int, float],
                  bs: dict[int, float]) -> list[Passage]:
        if not ranked:
            return []
        keys = [k for k, _ in ranked]
        rows = {r[0]: r for r in self.conn.execute(
            "SELECT c.key, c.id, c.doc_id, c.position, c.text, d.source, d.metadata, c.start, c.end "
            f"FROM chunks c JOIN docs d ON d.doc_id = c.doc_id WHERE c.key IN "
            f"({','.join('?' * len(keys))})", keys)}
        out = []
        for key, score in ranked:
            r = rows.get(key)
            if r is None:  # a stray vector without a catalog row: never returned
                continue
            md = json.loads(r[6] or "{}")
            md.update(start=r[7], end=r[8])
            out.append(Passage(id=r[1], text=r[4], source=r[5], score=float(score),
                               rank=len(out) + 1, doc_id=r[2], position=r[3],
                               vector_score=vs.get(key), bm25_score=bs.get(key), metadata=md))
        return out

    # ---------------------------------------------------------------- misc
    def stats(self) -> dict[str, Any]:
        c = self.conn
        meta = self._meta()
        return {"name": self.name, "path": str(self.dir),
                "documents": c.execute("SELECT COUNT(*) FROM docs").fetchone()[0],
                "chunks": c.execute("SELECT COUNT(*) FROM chunks").fetchone()[0],
                "embedder": meta.get("embedder_name", self.embedder.name), "dim": self.dim,
                "store": self.store.describe() if self._attached else meta.get("store"),
                "chunk_size": self.chunker.size, "overlap": self.chunker.overlap,
                "generation": int(meta.get("generation", 0))}

    def documents(self) -> list[dict[str, Any]]:
        return [{"doc_id": r[0], "source": r[1], "chunks": r[2], "indexed_at": r[3]}
                for r in self.conn.execute(
                    "SELECT doc_id, source, n_chunks, indexed_at FROM docs ORDER BY doc_id")]

    def check(self) -> dict[str, int]:
        """Consistency counts: catalog chunks, FTS rows, store vectors (all equal when sound)."""
        c = self.conn
        out = {"chunks": c.execute("SELECT COUNT(*) FROM chunks").fetchone()[0],
               "fts": c.execute("SELECT COUNT(*) FROM fts").fetchone()[0],
               "doc_chunks": c.execute("SELECT COALESCE(SUM(n_chunks), 0) FROM docs").fetchone()[0]}
        if self.dim:
            self._attach()
            out["vectors"] = self.store.count()
        return out

    def close(self) -> None:
        try:
            if self._attached:
                self.store.close()
        finally:
            self.conn.close()

    def __enter__(self) -> "Index":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Index({self.name!r}, path={str(self.dir)!r})"

