"""One deployment file switches the stores: the call log, review queue, adapter registry and span
store onto a real PostgreSQL server (``database:``), new indexes' vectors onto a real Chroma
server, spans also onto an OTLP endpoint; checked in this process (`apply_config`) and in a fresh
one started with only ``SLMFLOW_CONFIG`` set. (tests/test_loop_e2e.py runs the whole improvement
loop on such a file.)"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from slmflow.errors import ConfigError
from slmflow.scale.config import apply_config, load_config

from .conftest import free_port, reset_pg

_KEYS = ("SLMFLOW_HOME", "SLMFLOW_CALLS_URL", "SLMFLOW_ADAPTERS_URL", "SLMFLOW_TRACES_URL",
         "SLMFLOW_VECTOR_STORE",
         "OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_PROTOCOL", "SLMFLOW_RAY_ADDRESS",
         "SLMFLOW_LLAMA_THREADS")


@pytest.fixture
def clean_env():
    saved = {k: os.environ.get(k) for k in _KEYS}
    yield
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def _write(tmp_path: Path, **kw) -> Path:
    import yaml

    p = tmp_path / "deploy.yaml"
    p.write_text(yaml.safe_dump(kw))
    return p


def test_file_maps_to_the_environment_and_refuses_mistakes(tmp_path, clean_env):
    p = _write(tmp_path, home="state", call_log="postgresql://slm@db:5432/slmflow",
               vectors="chroma://chroma:8000/support",
               tracing={"otlp_endpoint": "http://collector:4318"}, ray="10.0.0.5:6379",
               llama_threads=1)
    env = load_config(p).env()
    assert env == {"SLMFLOW_HOME": str((tmp_path / "state").resolve()),
                   "SLMFLOW_CALLS_URL": "postgresql://slm@db:5432/slmflow",
                   "SLMFLOW_VECTOR_STORE": "chroma://chroma:8000/support",
                   "OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318",
                   "OTEL_EXPORTER_OTLP_PROTOCOL": "http", "SLMFLOW_RAY_ADDRESS": "10.0.0.5:6379",
                   "SLMFLOW_LLAMA_THREADS": "1"}
    os.environ["SLMFLOW_CALLS_URL"] = "sqlite:////tmp/explicit.db"  # explicit variables win
    apply_config(p)
    assert os.environ["SLMFLOW_CALLS_URL"] == "sqlite:////tmp/explicit.db"
    assert os.environ["SLMFLOW_VECTOR_STORE"] == "chroma://chroma:8000/support"
    for bad, msg in (({"call_log": "mysql://x"}, "call_log"), ({"vectors": "faiss"}, "vectors"),
                     ({"calllog": "sqlite:///x"}, "calllog: unknown key"),
                     ({"database": "sqlite:///x"}, "database: postgresql://"),
                     ({"adapters": "s3://bucket"}, "adapters: a folder"),
                     ({"llama_threads": "two"}, "llama_threads")):
        with pytest.raises(ConfigError, match=msg):
            load_config(_write(tmp_path, **bad))
    # errors name the file and the line of the key
    p.write_text("home: state\nray: 10.0.0.5:6379\ntraces: jaeger://x\n")
    with pytest.raises(ConfigError) as e:
        load_config(p)
    assert e.value.where == f"{p}:3" and "traces:" in str(e.value)
    p.write_text("home: [state\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(p)


def test_database_moves_every_store_and_each_can_stay(tmp_path):
    pg = "postgresql://slm@db:5432/slmflow"
    env = load_config(_write(tmp_path, database=pg)).env()
    assert env == {"SLMFLOW_CALLS_URL": pg, "SLMFLOW_ADAPTERS_URL": pg, "SLMFLOW_TRACES_URL": pg}
    env = load_config(_write(tmp_path, database=pg, adapters="shared/adapters",
                             traces="sqlite:////var/spans.db")).env()
    assert env == {"SLMFLOW_CALLS_URL": pg,
                   "SLMFLOW_ADAPTERS_URL": str((tmp_path / "shared/adapters").resolve()),
                   "SLMFLOW_TRACES_URL": "sqlite:////var/spans.db"}


@pytest.fixture(scope="module")
def chroma(tmp_path_factory):
    pytest.importorskip("chromadb")
    from .test_retrieval_chroma import Server

    s = Server(tmp_path_factory.mktemp("chroma") / "data").start()
    yield s
    s.stop()


def test_one_file_moves_call_log_review_queue_and_vectors(tmp_path, pg_url, chroma, clean_env):
    from slmflow.retrieval.index import Index
    from slmflow.retrieval.stores import ChromaStore
    from slmflow.store import CallRecord, open_call_log
    from slmflow.store.review import ReviewItem, ReviewQueue

    from .test_retrieval import KB, hash_embedder

    reset_pg(pg_url)
    port = chroma.url.rsplit(":", 1)[1]
    p = _write(tmp_path, database=pg_url, vectors=f"chroma://127.0.0.1:{port}/deploy-test",
               tracing={"otlp_endpoint": f"http://127.0.0.1:{free_port()}"})
    for k in _KEYS:
        os.environ.pop(k, None)
    cfg = apply_config(p)
    checked = cfg.check()
    assert checked["call_log"].startswith("PostgresCallLog")
    assert checked["adapters"].startswith("PostgresRegistryStore")
    assert "postgresql://" in checked["traces"] and "spans)" in checked["traces"]
    assert "heartbeat ok" in checked["vectors"]

    from slmflow.finetune.registry import AdapterRegistry

    peft = tmp_path / "peft"
    peft.mkdir()
    (peft / "adapter_config.json").write_text('{"r": 8}')
    (peft / "adapter_model.safetensors").write_bytes(b"\0" * 64)
    reg = AdapterRegistry()  # no location: the file's PostgreSQL server
    assert reg.register("router", peft, {"base_model": "smollm2-135m"}) == "v1"
    reg.promote("router", "v1", {"accuracy": 0.9})
    reg.store.close()

    log = open_call_log()  # no URL: the file's PostgreSQL server
    try:
        rec = CallRecord(kind="agent", agent="router", input={"text": "hi"}, output={"a": 1})
        log.append([rec])
        q = ReviewQueue(log)
        assert q.add([ReviewItem(call_id=rec.id, agent="router", reasons=["low confidence"])]) == 1
    finally:
        log.close()
    import psycopg

    with psycopg.connect(pg_url) as c:  # really on the server
        assert c.execute("SELECT agent FROM calls WHERE id = %s", (rec.id,)).fetchone() == \
            ("router",)
        assert c.execute("SELECT COUNT(*) FROM review_items").fetchone() == (1,)
        assert c.execute("SELECT version FROM adapter_versions WHERE agent = 'router'"
                         ).fetchall() == [(1,)]
        assert "v1" in c.execute("SELECT state FROM adapter_promoted").fetchone()[0]

    ix = Index("kb", path=tmp_path / "ix", embedder=hash_embedder())  # a new index
    try:
        assert isinstance(ix.store, ChromaStore) and ix.store.url == chroma.url
        assert ix.add([KB]).chunks > 0
        assert ix.search("refund", k=2).ids
    finally:
        ix.close()
    import chromadb

    client = chromadb.HttpClient(host="127.0.0.1", port=int(port))
    names = [getattr(c, "name", c) for c in client.list_collections()]
    assert any("deploy-test" in n for n in names), names


def test_slmflow_config_alone_configures_a_fresh_process(tmp_path, pg_url):
    reset_pg(pg_url)
    p = _write(tmp_path, home="state", call_log=pg_url,
               tracing={"otlp_endpoint": "http://127.0.0.1:4318"})
    env = {k: v for k, v in os.environ.items() if k not in _KEYS}
    env["SLMFLOW_CONFIG"] = str(p)
    code = ("import json, os, slmflow\n"
            "from slmflow.store import CallRecord, open_call_log\n"
            "from slmflow.home import home\n"
            "log = open_call_log(); log.append([CallRecord(agent='x', input='in')])\n"
            "print(json.dumps({'log': type(log).__name__, 'home': str(home()),\n"
            "  'otlp': os.environ.get('OTEL_EXPORTER_OTLP_ENDPOINT')})); log.close()\n")
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    got = json.loads(r.stdout.strip().splitlines()[-1])
    assert got == {"log": "PostgresCallLog", "home": str((tmp_path / "state").resolve()),
                   "otlp": "http://127.0.0.1:4318"}
    import psycopg

    with psycopg.connect(pg_url) as c:
        assert c.execute("SELECT COUNT(*) FROM calls WHERE agent = 'x'").fetchone() == (1,)


def test_cli_config_show_and_check(tmp_path):
    from typer.testing import CliRunner

    from slmflow.cli import app

    p = _write(tmp_path, call_log=f"sqlite:///{tmp_path / 'calls.db'}", ray="127.0.0.1:6379")
    r = CliRunner().invoke(app, ["config", "show", str(p)])
    assert r.exit_code == 0 and "SLMFLOW_RAY_ADDRESS=127.0.0.1:6379" in r.output
    r = CliRunner().invoke(app, ["config", "check", str(p)])
    assert r.exit_code == 0 and "SQLiteCallLog" in r.output, r.output
