"""Embedded vector-store candidates on synthetic clustered vectors: build time, p50/p95, recall@10."""
import os, sys, time, tempfile, json
import numpy as np

def data(n, nq=200, dim=384, seed=0):
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((max(n // 100, 10), dim)).astype(np.float32)
    x = centers[rng.integers(0, len(centers), n)] + 0.6 * rng.standard_normal((n, dim)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    q = centers[rng.integers(0, len(centers), nq)] + 0.6 * rng.standard_normal((nq, dim)).astype(np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    return x, q

def pct(ts): return float(np.percentile(ts, 50) * 1e3), float(np.percentile(ts, 95) * 1e3)

def run(name, build, query, x, q, truth):
    t0 = time.perf_counter(); st = build(x); bt = time.perf_counter() - t0
    ts, rec = [], []
    for i, v in enumerate(q):
        t = time.perf_counter(); ids = query(st, v); ts.append(time.perf_counter() - t)
        rec.append(len(set(ids) & set(truth[i])) / 10)
    p50, p95 = pct(ts)
    r = dict(store=name, n=len(x), build_s=round(bt, 2), p50_ms=round(p50, 3), p95_ms=round(p95, 3), recall10=round(float(np.mean(rec)), 4))
    print(json.dumps(r), flush=True); return r

def main(n):
    x, q = data(n)
    truth = [np.argsort(-(x @ v))[:10].tolist() for v in q]
    tmp = tempfile.mkdtemp()
    run("numpy-bruteforce", lambda x: x, lambda s, v: np.argpartition(-(s @ v), 10)[:10].tolist(), x, q, truth)
    import usearch.index as ui
    def ub(x):
        ix = ui.Index(ndim=x.shape[1], metric="cos", dtype="f32", connectivity=16, expansion_add=128, expansion_search=64)
        ix.add(np.arange(len(x)), x); return ix
    run("usearch-hnsw", ub, lambda s, v: s.search(v, 10).keys.tolist(), x, q, truth)
    import sqlite3, sqlite_vec
    def sb(x):
        c = sqlite3.connect(os.path.join(tmp, "v.db")); c.enable_load_extension(True); sqlite_vec.load(c)
        c.execute(f"create virtual table v using vec0(e float[{x.shape[1]}] distance_metric=cosine)")
        c.executemany("insert into v(rowid, e) values (?, ?)", ((i, x[i].tobytes()) for i in range(len(x)))); c.commit(); return c
    try:
        sqlite3.connect(":memory:").enable_load_extension
    except AttributeError:
        print(json.dumps(dict(store="sqlite-vec", n=len(x), skipped="this Python's sqlite3 cannot load extensions")), flush=True)
    else:
      run("sqlite-vec", sb, lambda c, v: [r[0] for r in c.execute("select rowid from v where e match ? and k = 10", (v.tobytes(),))], x, q, truth)
    import lancedb, pyarrow as pa
    def lb(x):
        db = lancedb.connect(os.path.join(tmp, "lance"))
        t = db.create_table("t", pa.table({"id": np.arange(len(x)), "vector": pa.FixedSizeListArray.from_arrays(pa.array(x.ravel()), x.shape[1])}))
        t.create_index(metric="cosine", vector_column_name="vector", index_type="IVF_HNSW_SQ")
        return t
    run("lancedb-ivf_hnsw_sq", lb, lambda t, v: [r["id"] for r in t.search(v).metric("cosine").limit(10).nprobes(20).select(["id"]).to_list()], x, q, truth)

if __name__ == "__main__":
    for n in map(int, sys.argv[1:]): main(n)
