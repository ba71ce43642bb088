"""PostgreSQL goes away under a running process (a restart, a failover: every connection is
terminated by the real server): the call log's writer loses no record, the adapter registry
reconnects, and an agent serving a promoted adapter keeps serving it meanwhile."""

from __future__ import annotations

import logging

import psycopg
import pytest

from .conftest import reset_pg


def _drop_connections(url: str) -> int:
    with psycopg.connect(url, autocommit=True) as c:
        return len(c.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE "
                             "pid <> pg_backend_pid() AND datname = current_database()"
                             ).fetchall())


def test_call_log_writer_survives_dropped_connections(pg_url):
    from slmflow.store import CallLogWriter, CallRecord, open_call_log

    reset_pg(pg_url)
    log = open_call_log(pg_url)
    w = CallLogWriter(log, max_wait_s=0.01)
    for i in range(5):
        w.submit(CallRecord(kind="agent", agent="router", input=f"before {i}"))
    assert w.flush(timeout=30)
    assert _drop_connections(pg_url) >= 1
    for i in range(5):
        w.submit(CallRecord(kind="agent", agent="router", input=f"after {i}"))
    assert w.flush(timeout=30)
    w.close(close_log=False)
    assert w.failed_batches >= 1  # the first write after the drop failed and was retried
    assert sorted(r.input for r in log.query(agent="router", limit=100)) == \
        sorted([f"before {i}" for i in range(5)] + [f"after {i}" for i in range(5)])
    log.close()
    from slmflow.store.calllog import StoreError

    with pytest.raises(StoreError, match="closed"):
        log.query(agent="router")


def test_registry_reconnects_and_serving_keeps_its_adapter(pg_url, tmp_path, caplog):
    from slmflow.finetune.registry import AdapterRegistry, PromotedAdapterModel
    from slmflow.models.openai import OpenAIModel

    reset_pg(pg_url)
    peft = tmp_path / "peft"
    peft.mkdir()
    (peft / "adapter_config.json").write_text('{"r": 8}')
    reg = AdapterRegistry(pg_url)
    reg.store.cache = tmp_path / "cache"
    reg.store.poll_s = 0.0  # check the pointer at every call
    for _ in range(2):
        reg.register("router", peft, {"base_model": "m"})
    reg.promote("router", "v1", {"accuracy": 0.5})
    # a server-hosted base: no network is touched until a generation, which this test never makes
    served = PromotedAdapterModel(reg, OpenAIModel("m", base_url="http://127.0.0.1:9/v1"),
                                  "router")
    assert served.version == "v1"
    _drop_connections(pg_url)
    with caplog.at_level(logging.WARNING, logger="slmflow.adapters"):
        assert served.version == "v1"  # the pointer check failed: v1 keeps serving
    assert "keeps serving v1" in caplog.text
    other = AdapterRegistry(pg_url)  # another process promotes meanwhile
    other.promote("router", "v2", {"accuracy": 0.9})
    other.store.close()
    assert served.version == "v2"  # the registry reconnected and saw it
    assert reg.versions("router") == ["v1", "v2"]
    reg.store.close()
