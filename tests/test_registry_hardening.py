"""The adapter registry refuses names that leave it, and contents it never wrote (issue 15, item
12): versions like ``../../outside`` through the Python API, each store and the CLI; promoted
pointers naming such versions; truncated ``promoted.json``/``card.json`` as one error naming the
file; files whose bytes changed after registration. Files and PostgreSQL alike."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from slmflow.errors import ConfigError, ModelLoadError
from slmflow.finetune.registry import AdapterRegistry
from slmflow.finetune.registry_store import AdapterFileError, RegistryStoreError

ADAPTER_GGUF = Path(__file__).parent.parent / "examples" / "support" / "adapters" / "router" / \
    "adapter.gguf"
BAD_AGENTS = ["../etc", "..", ".", "", "a/b", "a\\b", "-rf", ".hidden", "x" * 129, "a..b",
              "ro\x00uter", "r\nouter"]
BAD_VERSIONS = ["../../outside", "../other/v1", "v1/../../x", "", "..", "v", "1", "v-1",
                "v1 ", "V1", "v" + "9" * 10]


@pytest.fixture
def peft_dir(tmp_path):
    """A stand-in PEFT adapter folder (the registry copies it; nothing here loads it)."""
    d = tmp_path / "peft"
    d.mkdir()
    (d / "adapter_config.json").write_text(json.dumps({"r": 8}))
    (d / "adapter_model.safetensors").write_bytes(b"\0" * 64)
    return d


@pytest.fixture(params=["files", "postgresql"])
def registry(request, tmp_path):
    if request.param == "files":
        yield AdapterRegistry(tmp_path / "reg")
        return
    from .conftest import reset_pg

    url = request.getfixturevalue("pg_url")
    reset_pg(url)
    reg = AdapterRegistry(url)
    reg.store.cache = tmp_path / "cache"
    yield reg
    reg.store.close()


def _outside(tmp_path: Path) -> Path:
    """A card a traversal would reach: tmp/outside/card.json (= reg/router/../../outside)."""
    d = tmp_path / "outside"
    d.mkdir(exist_ok=True)
    (d / "card.json").write_text(json.dumps({"secret": "outside", "eval_scores": {}}))
    return d / "card.json"


def test_traversal_names_are_refused_by_the_api_and_the_store(registry, peft_dir, tmp_path):
    reg = registry
    outside = _outside(tmp_path)
    before = outside.read_text()
    assert reg.register("router", peft_dir, {"base_model": "smollm2-135m"}) == "v1"
    assert reg.register("other", peft_dir, {"base_model": "smollm2-135m"}) == "v1"
    reg.promote("router", "v1", {"accuracy": 0.5})
    for v in BAD_VERSIONS:
        for call in (lambda: reg.card("router", v), lambda: reg.path("router", v),
                     lambda: reg.promote("router", v, {"accuracy": 1.0}, force=True),
                     lambda: reg.update_card("router", v, {}),
                     lambda: reg.model_for(None, "router", v),  # type: ignore[arg-type]
                     lambda: reg.store.card("router", v),
                     lambda: reg.store.write_card("router", v, {"x": 1}),
                     lambda: reg.store.local_dir("router", v),
                     lambda: reg.store.write_promoted("router", {"version": v}),
                     lambda: reg.store.write_promoted("router", {"version": "v1",
                                                                 "previous": v})):
            with pytest.raises(ConfigError, match="invalid version"):
                call()
    for a in BAD_AGENTS:
        for call in (lambda: reg.versions(a), lambda: reg.card(a, "v1"),
                     lambda: reg.promoted(a), lambda: reg.history(a), lambda: reg.rollback(a),
                     lambda: reg.register(a, peft_dir, {}),
                     lambda: reg.promote(a, "v1", {"accuracy": 1.0}),
                     lambda: reg.store.versions(a), lambda: reg.store.card(a, "v1"),
                     lambda: reg.store.promoted(a), lambda: reg.store.history(a),
                     lambda: reg.store.local_dir(a, "v1"), lambda: reg.store.stamp(a),
                     lambda: reg.store.append_history(a, {}),
                     lambda: reg.store.write_promoted(a, {"version": "v1"})):
            with pytest.raises(ConfigError, match="invalid agent name"):
                call()
        with pytest.raises(ConfigError, match="invalid agent name"):
            with reg.store.lock(a):
                pass
    # nothing moved: the card outside, the pointer, the other agent
    assert outside.read_text() == before
    assert reg.promoted("router") == "v1" and reg.promoted("other") is None
    assert reg.agents() == ["other", "router"]
    if reg.root is not None:  # a folder that is no valid agent name is not listed
        (reg.root / ".hidden").mkdir()
        (reg.root / "a..b").mkdir()
    else:
        with reg.store._tx() as cur:
            cur.execute("INSERT INTO adapter_promoted (agent, state, seq) VALUES "
                        "('../x', '{}', 1)")
    assert reg.agents() == ["other", "router"]
    assert not (tmp_path / "etc").exists()
    # names that are valid still work
    assert reg.register("support.router_2-b", peft_dir, {}) == "v1"
    assert reg.card("support.router_2-b", "v1")["lineage"]["agent"] == "support.router_2-b"


def test_pointer_and_cards_read_back_are_checked(registry, peft_dir, tmp_path):
    """A promoted pointer naming ../x, a truncated promoted.json / card.json, a non-object card:
    one RegistryStoreError naming the file (or the table), never a path outside or a
    traceback."""
    reg = registry
    reg.register("router", peft_dir, {"base_model": "smollm2-135m"})
    reg.register("router", peft_dir, {"base_model": "smollm2-135m"})
    reg.promote("router", "v1", {"accuracy": 0.5})
    files = reg.root is not None

    def set_pointer(text: str) -> str:
        if files:
            (reg.root / "router" / "promoted.json").write_text(text)
            return str(reg.root / "router" / "promoted.json")
        with reg.store._tx() as cur:
            cur.execute("UPDATE adapter_promoted SET state = %s WHERE agent = 'router'", (text,))
        return "adapter_promoted"

    def set_card(text: str) -> str:
        if files:
            (reg.root / "router" / "v2" / "card.json").write_text(text)
            return str(reg.root / "router" / "v2" / "card.json")
        with reg.store._tx() as cur:
            cur.execute("UPDATE adapter_versions SET card = %s WHERE agent = 'router' AND "
                        "version = 2", (text,))
        return "router@v2"

    for text, match in [('{"version": "../../outside", "previous": null}', "invalid version"),
                        ('{"version": "v1", "previous": "../other/v1"}', "invalid previous"),
                        ('{"version": 3}', "invalid version"), ('["v1"]', "not a JSON object"),
                        ('{"version": "v1", "prev', "not valid JSON")]:
        where = set_pointer(text)
        for call in (lambda: reg.promoted("router"), lambda: reg.rollback("router"),
                     lambda: reg.promote("router", "v2", {"accuracy": 0.9})):
            with pytest.raises(RegistryStoreError, match=match) as e:
                call()
            assert where in str(e.value)
    set_pointer('{"version": "v1", "previous": null}')
    assert reg.promoted("router") == "v1"

    for text, match in [('{"base_model": "smollm2-135m", "eval_sc', "not valid JSON"),
                        ("", "not valid JSON"), ("[1, 2]", "not a JSON object")]:
        where = set_card(text)
        with pytest.raises(RegistryStoreError, match=match) as e:
            reg.card("router", "v2")
        assert where in str(e.value)
    if files:  # a broken history line names the file and the line
        (reg.root / "router" / "history.jsonl").write_text('{"action": "promoted"}\n{"act\n')
        with pytest.raises(RegistryStoreError, match=r"history.jsonl:2 is not valid JSON"):
            reg.history("router")


def test_changed_files_are_refused_or_fetched_again(registry, peft_dir):
    """A file changed after registration: the file store refuses it (it recorded checksums at
    registration); a PostgreSQL store's machine copy is replaced by the verified bytes."""
    reg = registry
    staged = peft_dir.parent / "staged"
    shutil.copytree(peft_dir, staged / "adapter")
    shutil.copy(ADAPTER_GGUF, staged / "adapter.gguf")
    assert reg.store.add_version("router", staged, lambda v: {"base_model": "smollm2-135m"}) \
        == "v1"
    d = reg.path("router", "v1")
    assert (d / "adapter.gguf").read_bytes() == ADAPTER_GGUF.read_bytes()
    data = bytearray((d / "adapter.gguf").read_bytes())
    data[5000] ^= 0xFF
    (d / "adapter.gguf").write_bytes(bytes(data))
    if reg.root is not None:
        with pytest.raises(AdapterFileError, match="checksum") as e:
            reg.path("router", "v1")
        assert isinstance(e.value, ModelLoadError)  # the gateway answers 503, not 500
        assert "router@v1/adapter.gguf" in str(e.value)
        (d / "adapter.gguf").unlink()
        with pytest.raises(AdapterFileError, match="missing"):
            reg.path("router", "v1")
    else:
        again = reg.path("router", "v1")
        assert (again / "adapter.gguf").read_bytes() == ADAPTER_GGUF.read_bytes()


def test_postgresql_file_paths_cannot_leave_the_cache(pg_url, tmp_path, peft_dir):
    from .conftest import reset_pg

    reset_pg(pg_url)
    reg = AdapterRegistry(pg_url)
    reg.store.cache = tmp_path / "cache"
    try:
        reg.register("router", peft_dir, {})
        sha = hashlib.sha256(b"x").hexdigest()  # the row's checksum is right: only its path
        # (from cache/router/.v1.partial/) would land at tmp_path/evil, tmp_path/x, /tmp/evil
        for path in ["../../../evil", "adapter/../../../../x", "/tmp/evil", "a//b"]:
            with reg.store._tx() as cur:
                cur.execute("DELETE FROM adapter_files WHERE sha256 = %s", (sha,))
                cur.execute("INSERT INTO adapter_files (agent, version, path, data, sha256) "
                            "VALUES ('router', 1, %s, %s, %s)", (path, b"x", sha))
            with pytest.raises(RegistryStoreError, match="invalid file path") as e:
                reg.path("router", "v1")
            assert "adapter_files" in str(e.value)
            assert not (tmp_path / "evil").exists() and not (tmp_path / "x").exists()
    finally:
        reg.store.close()


def _cli(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "slmflow", "adapters", *args], env=env,
                          capture_output=True, text=True, timeout=120)


def test_cli_refuses_traversal_and_names_the_broken_file(tmp_path, peft_dir):
    reg_dir = tmp_path / "home" / "adapters"
    reg = AdapterRegistry(reg_dir)
    reg.register("router", peft_dir, {"base_model": "smollm2-135m"})
    reg.register("other", peft_dir, {"base_model": "smollm2-135m", "eval_scores": {"a": 0.1}})
    outside = tmp_path / "home" / "outside" / "card.json"  # = adapters/router/../../outside
    outside.parent.mkdir()
    outside.write_text(json.dumps({"secret": 1}))
    other_card = (reg_dir / "other" / "v1" / "card.json").read_text()
    env = {**os.environ, "SLMFLOW_HOME": str(tmp_path / "home"), "SLMFLOW_TRACING": "off"}
    env.pop("SLMFLOW_ADAPTERS_URL", None)

    for args in (["show", "router", "../../outside"],
                 ["promote", "router", "../other/v1", "--score", "a=0.9"],
                 ["promote", "router", "../../outside", "--score", "a=0.9", "--force"]):
        r = _cli(args, env)
        assert r.returncode == 1, (args, r.stdout, r.stderr)
        assert "invalid version" in r.stderr and "Traceback" not in r.stderr
        assert len(r.stderr.strip().splitlines()) <= 4, r.stderr
    r = _cli(["show", "../router", "v1"], env)
    assert r.returncode == 1 and "invalid agent name" in r.stderr
    assert outside.read_text() == json.dumps({"secret": 1})
    assert (reg_dir / "other" / "v1" / "card.json").read_text() == other_card
    assert not (reg_dir / "router" / "promoted.json").exists()

    (reg_dir / "router" / "promoted.json").write_text('{"version": "v1", "prev')
    r = _cli(["list"], env)
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    err = r.stderr.replace("\n", "")
    assert "router/promoted.json" in err and "not valid JSON" in err
    assert len(r.stderr.strip().splitlines()) <= 4, r.stderr
    (reg_dir / "router" / "promoted.json").unlink()
    (reg_dir / "router" / "v1" / "card.json").write_text('{"base_model": "smol')
    r = _cli(["show", "router", "v1"], env)
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    assert "router/v1/card.json" in r.stderr.replace("\n", "")
