"""Retrieval benchmark: indexing throughput, query latency p50/p95 and recall@10 of the ANN index
against exact NumPy search, embedded store vs Chroma server, at 10k and 100k chunks.

    HF_HUB_OFFLINE=1 SLMFLOW_HOME=/tmp/slmhome-retrieval .venv/bin/python bench/retrieval.py \
        [--sizes 10000 100000] [--queries 200] [--no-server] [--json out.json]

Store part: synthetic clustered unit vectors (384-d, like MiniLM), because embedding 100k real
chunks with MiniLM on 2 CPU cores would take about an hour; the stores only see vectors anyway.
Text part: real end-to-end indexing (read, chunk, embed with MiniLM, write) of the BANKING77-derived
documents plus the support KB, to give the real chunks/s, which the embedder dominates.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))


def clustered(n: int, nq: int, dim: int = 384, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((max(n // 100, 10), dim)).astype(np.float32)
    x = centers[rng.integers(0, len(centers), n)] + 0.6 * rng.standard_normal((n, dim)).astype(np.float32)
    q = centers[rng.integers(0, len(centers), nq)] + 0.6 * rng.standard_normal((nq, dim)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    return x, q


def pct(ts: list[float]) -> tuple[float, float]:
    return float(np.percentile(ts, 50) * 1e3), float(np.percentile(ts, 95) * 1e3)


def measure(name: str, n: int, build, search, q: np.ndarray, truth: list[set]) -> dict:
    t0 = time.perf_counter()
    build()
    bt = time.perf_counter() - t0
    ts, rec = [], []
    for i, v in enumerate(q):
        t = time.perf_counter()
        keys = search(v)
        ts.append(time.perf_counter() - t)
        rec.append(len(set(keys) & truth[i]) / 10)
    p50, p95 = pct(ts)
    r = {"store": name, "chunks": n, "index_s": round(bt, 2), "vectors_per_s": round(n / bt) if bt > 1e-3 else None,
         "p50_ms": round(p50, 3), "p95_ms": round(p95, 3), "recall@10": round(float(np.mean(rec)), 4)}
    print(json.dumps(r), flush=True)
    return r


def store_bench(n: int, nq: int, server_url: str | None) -> list[dict]:
    from slmflow.retrieval.stores import ChromaStore, EmbeddedStore

    x, q = clustered(n, nq)
    keys = np.arange(1, n + 1, dtype=np.int64)
    truth = [set((np.argsort(-(x @ v))[:10] + 1).tolist()) for v in q]
    out = [measure("numpy brute force", n, lambda: None,
                   lambda v: (np.argpartition(-(x @ v), 10)[:10] + 1).tolist(), q, truth)]
    tmp = Path(tempfile.mkdtemp())
    conn = sqlite3.connect(tmp / "index.db", isolation_level=None)
    emb = EmbeddedStore()

    def build_embedded() -> None:
        emb.attach(tmp, conn, "bench", x.shape[1], 0)
        for i in range(0, n, 2048):  # the Index's batch size: one transaction per batch
            conn.execute("BEGIN")
            emb.write(keys[i:i + 2048], x[i:i + 2048])
            conn.execute("COMMIT")
        emb.committed(1, None, [])
        emb.search(q[0], 10)  # builds the HNSW graph from SQLite (or the exact matrix)
        emb.flush()

    out.append(measure("embedded (SQLite + usearch HNSW)", n, build_embedded,
                       lambda v: [k for k, _ in emb.search(v, 10)], q, truth))
    conn.close()
    shutil.rmtree(tmp, ignore_errors=True)
    if server_url:
        st = ChromaStore(server_url, collection=f"bench-{n}")

        def build_server() -> None:
            st.attach(Path("."), None, "bench", x.shape[1], 0)  # type: ignore[arg-type]
            st.write(keys, x)

        out.append(measure("server (Chroma, HTTP loopback)", n, build_server,
                           lambda v: [k for k, _ in st.search(v, 10)], q, truth))
        st.drop()
    return out


def text_bench() -> dict:
    from slmflow.retrieval.embedder import CachedEmbedder, MiniLMEmbedder
    from slmflow.retrieval.evaluation import banking77_path, load_labelled
    from slmflow.retrieval.index import Index
    from slmflow.retrieval.types import Document

    tmp = Path(tempfile.mkdtemp())
    emb = CachedEmbedder(MiniLMEmbedder(), tmp / "cache.db")  # a cold cache: every chunk embedded
    emb.embed(["warm-up"])  # model load is not indexing
    docs, _ = load_labelled(banking77_path())
    ix = Index("bench-text", path=tmp / "ix", embedder=emb)
    t0 = time.perf_counter()
    ix.add_documents([Document(id=d["id"], text=d["text"]) for d in docs])
    rep = ix.add([ROOT / "examples" / "support" / "kb"])
    dt = time.perf_counter() - t0
    n = ix.stats()["chunks"]
    ts = []
    for d in docs[:100]:
        t = time.perf_counter()
        ix.search(d["text"][:80] + " (new)", k=5)  # uncached query: includes embedding the query
        ts.append(time.perf_counter() - t)
    p50, p95 = pct(ts)
    t0 = time.perf_counter()
    again = ix.add([ROOT / "examples" / "support" / "kb"])
    r = {"real_text_chunks": n, "index_s": round(dt, 2), "chunks_per_s": round(n / dt, 1),
         "query_p50_ms_with_embedding": round(p50, 1), "query_p95_ms_with_embedding": round(p95, 1),
         "reindex_unchanged_s": round(time.perf_counter() - t0, 3), "unchanged": len(again.unchanged),
         "kb_files": len(rep.added)}
    print(json.dumps(r), flush=True)
    ix.close()
    shutil.rmtree(tmp, ignore_errors=True)
    return r


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--no-server", action="store_true")
    ap.add_argument("--no-text", action="store_true")
    ap.add_argument("--json", type=Path)
    a = ap.parse_args()
    server = None
    url = None
    if not a.no_server:
        chroma = shutil.which("chroma") or str(Path(sys.executable).parent / "chroma")
        import socket

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        data = Path(tempfile.mkdtemp())
        server = subprocess.Popen([chroma, "run", "--path", str(data), "--host", "127.0.0.1",
                                   "--port", str(port)], stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL)
        import httpx

        url = f"http://127.0.0.1:{port}"
        for _ in range(300):
            try:
                if httpx.get(f"{url}/api/v2/heartbeat", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
    results: dict = {"stores": []}
    try:
        if not a.no_text:
            results["text"] = text_bench()
        for n in a.sizes:
            results["stores"] += store_bench(n, a.queries, url)
    finally:
        if server:
            server.terminate()
            server.wait(10)
    if a.json:
        a.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
