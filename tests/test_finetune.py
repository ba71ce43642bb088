"""Fine-tuning: datasets, a real (tiny) LoRA run on SmolLM2, resume after SIGKILL, GGUF export
checked against transformers+PEFT, and the registry's gated promotion with hot swap."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Literal

import pytest
from pydantic import BaseModel

from slmflow import ConfigError, Message, Settings
from slmflow.finetune.data import (ChatEncoder, Example, check_leakage, data_hash, dedupe,
                                   load_examples, split, target_text, validate_targets)
from slmflow.finetune.registry import AdapterRegistry, PromotionRejected
from slmflow.finetune.trainer import CheckpointError, TrainConfig, train_lora
from slmflow.models.catalog import embedded_gguf_path

INSTR = "Classify the message: greeting or farewell."
ROWS = [("hello there", "greeting"), ("hi!", "greeting"), ("good morning", "greeting"),
        ("hey, how are you", "greeting"), ("bye now", "farewell"), ("see you later", "farewell"),
        ("goodbye", "farewell"), ("farewell, friend", "farewell")]


class Label(BaseModel):
    label: Literal["greeting", "farewell"]


def fmt(text: str) -> list[Message]:
    return [Message("system", INSTR), Message("user", text)]


@pytest.fixture(scope="module")
def base_dir(slmflow_home):
    from slmflow.models.transformers import dequantized_base

    return dequantized_base(embedded_gguf_path(), "smollm2-135m")


def examples():
    return [Example(t, {"label": y}, source=f"toy:{i}") for i, (t, y) in enumerate(ROWS)]


# -- data ----------------------------------------------------------------------------------------
def test_load_examples_errors_name_file_line_and_field(tmp_path):
    f = tmp_path / "d.jsonl"
    f.write_text('{"input": "a", "target": "x"}\n{"input": "b"}\n')
    with pytest.raises(ConfigError) as e:
        load_examples(f)
    assert "d.jsonl:2" in str(e.value) and "'target'" in str(e.value)
    f.write_text('{"input": "a", "target": "x"}\nnot json\n')
    with pytest.raises(ConfigError) as e:
        load_examples(f)
    assert "d.jsonl:2" in str(e.value)
    c = tmp_path / "d.csv"
    c.write_text("text,category\nhello,greeting\n")
    ex = load_examples(c, input_field="text", target_field="category", target_key="label")
    assert ex[0].target == {"label": "greeting"} and ex[0].source == "d.csv:2"


def test_dedupe_split_leakage_hash_and_targets():
    ex = examples() + [Example("Hello  there", {"label": "greeting"})]
    assert len(dedupe(ex)) == len(ROWS)
    tr, va = split([Example(str(i), "x") for i in range(40)], 0.25, seed=1)
    assert len(va) == 10 and not {e.input for e in tr} & {e.input for e in va}
    with pytest.raises(ConfigError) as e:
        check_leakage(examples(), ["GOODBYE"], where="router")
    assert "1 training examples" in str(e.value)
    check_leakage(examples(), ["something else"], where="router")
    assert data_hash(examples()) == data_hash(examples()) != data_hash(examples()[:-1])
    with pytest.raises(ConfigError) as e:
        validate_targets(examples() + [Example("yo", {"label": "shrug"})], Label, where="router")
    assert "1 targets do not fit Label" in str(e.value)
    assert target_text(Example("q", {"label": "x"}, reasoning="because")) == \
        '{"reasoning":"because","label":"x"}'


def test_loss_is_masked_to_the_completion(base_dir):
    import transformers

    tok = transformers.AutoTokenizer.from_pretrained(str(base_dir))
    enc = ChatEncoder(tok, fmt, max_len=128).encode(examples()[0])
    n_prompt = sum(1 for x in enc.labels if x == -100)
    completion = tok.decode(enc.input_ids[n_prompt:])
    assert completion == '{"label":"greeting"}<|im_end|>'
    assert enc.labels[n_prompt:] == enc.input_ids[n_prompt:]
    assert ChatEncoder(tok, fmt, max_len=10).encode(examples()[0]) is None


# -- training ------------------------------------------------------------------------------------
CFG = TrainConfig(r=4, alpha=8, batch_size=4, max_steps=6, checkpoint_every=2, lr=1e-3,
                  max_len=96, dropout=0.1)


def test_training_writes_adapter_and_card(base_dir, tmp_path):
    res = train_lora(base_dir, examples(), examples()[:2], fmt, tmp_path / "run", CFG,
                     base_name="smollm2-135m", progress=False, threads=1)
    assert (res.adapter_dir / "adapter_model.safetensors").is_file()
    card = json.loads((tmp_path / "run" / "card.json").read_text())
    assert card["base_model"] == "smollm2-135m" and card["data_hash"] == data_hash(
        examples() + examples()[:2])
    assert card["metrics"]["steps"] == 6 and card["metrics"]["val_loss"] > 0
    assert not (tmp_path / "run" / "checkpoint").exists()  # cleaned after success


def test_warm_start_continues_from_a_trained_adapter(base_dir, tmp_path):
    """init_adapter: the run starts from the parent's weights (a fresh LoRA starts with B = 0);
    at a learning rate too small to move them, the result is the parent; a rank or target
    mismatch is refused with what differs."""
    from dataclasses import replace

    import numpy as np
    from safetensors.numpy import load_file

    parent = train_lora(base_dir, examples(), [], fmt, tmp_path / "parent", CFG,
                        progress=False, threads=1).adapter_dir
    p = load_file(str(parent / "adapter_model.safetensors"))
    still = replace(CFG, lr=1e-12, max_steps=1, init_adapter=str(parent))
    warm = train_lora(base_dir, examples(), [], fmt, tmp_path / "warm", still,
                      progress=False, threads=1).adapter_dir
    cold = train_lora(base_dir, examples(), [], fmt, tmp_path / "cold",
                      replace(still, init_adapter=None), progress=False, threads=1).adapter_dir
    w = load_file(str(warm / "adapter_model.safetensors"))
    c = load_file(str(cold / "adapter_model.safetensors"))
    b_keys = [k for k in p if "lora_B" in k]
    assert b_keys and all(np.abs(p[k]).max() > 0 for k in b_keys)
    assert all(np.allclose(w[k], p[k], atol=1e-6) for k in p)
    assert all(np.abs(c[k]).max() < 1e-6 for k in b_keys)  # fresh: B starts at zero
    with pytest.raises(ConfigError, match="r=4"):
        train_lora(base_dir, examples(), [], fmt, tmp_path / "bad",
                   replace(still, r=8, alpha=16), progress=False, threads=1)


def test_resume_after_sigkill_gives_the_same_adapter(base_dir, tmp_path):
    """A run killed mid-way and resumed equals an uninterrupted run, tensor for tensor."""
    from safetensors.numpy import load_file

    script = tmp_path / "run.py"
    script.write_text(textwrap.dedent(f"""
        import sys, time
        sys.path.insert(0, {str(Path(__file__).parent.parent)!r})
        from tests.test_finetune import CFG, examples, fmt
        from slmflow.finetune import trainer
        real_save = trainer._atomic_dir_write
        def slow_save(target, write):
            real_save(target, write)
            time.sleep(30)  # park after the first checkpoint so the test can kill us
        trainer._atomic_dir_write = slow_save
        trainer.train_lora({str(base_dir)!r}, examples(), [], fmt, sys.argv[1], CFG,
                           progress=False, threads=1)
    """))
    run = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, str(script), str(run)], env=os.environ.copy())
    deadline = time.time() + 240
    while not (run / "checkpoint" / "state.pt").exists():
        assert proc.poll() is None and time.time() < deadline, "trainer died before checkpoint"
        time.sleep(0.2)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    resumed = train_lora(base_dir, examples(), [], fmt, run, CFG, progress=False, threads=1)
    assert resumed.resumed_from == 2 and resumed.steps == 6
    straight = train_lora(base_dir, examples(), [], fmt, tmp_path / "straight", CFG,
                          progress=False, threads=1)
    a = load_file(str(resumed.adapter_dir / "adapter_model.safetensors"))
    b = load_file(str(straight.adapter_dir / "adapter_model.safetensors"))
    assert a.keys() == b.keys()
    import numpy as np

    for k in a:
        np.testing.assert_allclose(a[k], b[k], rtol=1e-4, atol=1e-6)


def test_resume_with_other_settings_is_refused(base_dir, tmp_path):
    run = tmp_path / "r"
    (run / "checkpoint").mkdir(parents=True)
    (run / "run.json").write_text(json.dumps({"config": {}, "data_hash": "x", "base": "y"}))
    with pytest.raises(ConfigError):
        train_lora(base_dir, examples(), [], fmt, run, CFG, progress=False)


def test_full_disk_during_checkpoint_keeps_the_previous_one(tmp_path):
    from slmflow.finetune.trainer import _atomic_dir_write

    target = tmp_path / "checkpoint"
    _atomic_dir_write(target, lambda d: (d / "state.pt").write_text("step 2"))

    def full(d: Path) -> None:
        raise OSError(28, "No space left on device")

    with pytest.raises(CheckpointError) as e:
        _atomic_dir_write(target, full)
    assert "No space left" in str(e.value)
    assert (target / "state.pt").read_text() == "step 2"


# -- GGUF export ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def random_adapter(base_dir, tmp_path_factory):
    """A random (but mild) LoRA on every linear layer, so its effect is visible."""
    import torch
    import transformers
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_pretrained(str(base_dir), dtype=torch.float32)
    pm = get_peft_model(model, LoraConfig(
        r=8, lora_alpha=16, init_lora_weights=False,
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                        "down_proj"]))
    for n, p in pm.named_parameters():
        if "lora_B" in n:
            p.data *= 0.5
    out = tmp_path_factory.mktemp("adapter") / "random"
    pm.save_pretrained(out)
    return out


def test_gguf_lora_matches_peft_on_transformers(random_adapter, tmp_path, smollm):
    from slmflow.finetune import gguf_export
    from slmflow.models.llamacpp import LlamaCppModel
    from slmflow.models.transformers import TransformersModel

    gguf_file = gguf_export.export_lora_gguf(random_adapter, embedded_gguf_path(),
                                             tmp_path / "a.gguf")
    peft = TransformersModel(embedded_gguf_path(), gguf=True, adapter_path=random_adapter).load()
    lcpp = LlamaCppModel(embedded_gguf_path(), lora_path=gguf_file)
    s = Settings(max_tokens=12)
    prompt = "Name a primary color."
    a, b = peft.generate_sync(prompt, settings=s), lcpp.generate_sync(prompt, settings=s)
    base = smollm.generate_sync(prompt, settings=s)
    assert a.text == b.text != base.text
    assert b.model.adapter == "a"
    # without llama.cpp's rotary row permutation of q/k, the adapter would act differently
    orig = gguf_export._permute
    try:
        gguf_export._permute = lambda w, n: w
        wrong = gguf_export.export_lora_gguf(random_adapter, embedded_gguf_path(),
                                             tmp_path / "wrong.gguf")
    finally:
        gguf_export._permute = orig
    c = LlamaCppModel(embedded_gguf_path(), lora_path=wrong).generate_sync(prompt, settings=s)
    assert c.text != a.text


# -- registry ------------------------------------------------------------------------------------
@pytest.fixture(params=["files", "postgresql"])
def registry(request, tmp_path):
    """An empty adapter registry: files under tmp_path, then on the real PostgreSQL server."""
    if request.param == "files":
        yield AdapterRegistry(tmp_path / "adapters")
        return
    from .conftest import reset_pg

    url = request.getfixturevalue("pg_url")
    reset_pg(url)
    reg = AdapterRegistry(url)
    reg.store.cache = tmp_path / "cache"
    yield reg
    reg.store.close()


def test_registry_gate_rollback_and_hot_swap(random_adapter, registry, smollm):
    reg = registry
    card = {"base_model": "smollm2-135m", "data_hash": "h"}
    v1 = reg.register("router", random_adapter, card, base_gguf=embedded_gguf_path())
    v2 = reg.register("router", random_adapter, card, base_gguf=embedded_gguf_path(),
                      parent=v1, trace_ids=["abc"])
    assert (v1, v2) == ("v1", "v2") and reg.versions("router") == ["v1", "v2"]
    assert reg.card("router", "v2")["lineage"]["trace_ids"] == ["abc"]
    reg.promote("router", "v1", {"accuracy": 0.80})

    served = reg.resolver()(smollm, "router")
    assert served.version == "v1" and served.info.adapter == "router@v1"

    with pytest.raises(PromotionRejected) as e:
        reg.promote("router", "v2", {"accuracy": 0.75})
    assert "0.8000 -> 0.7500" in str(e.value)
    assert reg.promoted("router") == "v1" and reg.history("router")[-1]["action"] == "rejected"

    reg.promote("router", "v2", {"accuracy": 0.85})
    assert served.version == "v2"  # picked up without rebuilding anything
    r = served.generate_sync("hello", settings=Settings(max_tokens=4))
    assert r.model.adapter == "router@v2"
    assert reg.rollback("router") == "v1" and served.version == "v1"
    pinned = reg.resolver()(smollm, "router@v2")
    assert pinned.info.adapter == "router@v2"
    with pytest.raises(ConfigError):
        reg.resolver()(smollm, "router@v9")


def test_registry_on_postgresql_is_shared_by_processes(random_adapter, pg_url, tmp_path, smollm):
    """Two processes register at once (distinct versions, no gap), another machine's home
    materialises the same bytes, a file registry copies over whole, and a promotion made by one
    process reaches an agent served by another within poll_s."""
    from .conftest import reset_pg

    reset_pg(pg_url)
    script = textwrap.dedent(f"""
        import sys
        from slmflow.finetune.registry import AdapterRegistry
        reg = AdapterRegistry({pg_url!r})
        print(reg.register("router", {str(random_adapter)!r}, {{"base_model": "smollm2-135m"}}))
    """)
    env = {**os.environ, "SLMFLOW_HOME": str(tmp_path / "writer")}
    procs = [subprocess.Popen([sys.executable, "-c", script], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(3)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1][-2000:] for o in outs]
    assert sorted(o[0].strip() for o in outs) == ["v1", "v2", "v3"]

    reg = AdapterRegistry(pg_url)
    reg.store.cache = tmp_path / "reader-cache"
    assert reg.versions("router") == ["v1", "v2", "v3"] and reg.agents() == ["router"]
    local = reg.path("router", "v2")
    assert str(local).startswith(str(tmp_path / "reader-cache"))
    for f in random_adapter.iterdir():
        assert (local / "adapter" / f.name).read_bytes() == f.read_bytes()
    assert reg.path("router", "v2") == local  # materialised once
    # a corrupted copy in the database is refused, not loaded
    with reg.store._tx() as cur:
        cur.execute("UPDATE adapter_files SET data = %s WHERE agent = 'router' AND version = 3 "
                    "AND path = 'adapter/adapter_config.json'", (b"{}",))
    from slmflow.finetune.registry_store import RegistryStoreError

    with pytest.raises(RegistryStoreError, match="checksum"):
        reg.path("router", "v3")
    # the database is reset and refilled: the same version name, other files; the machine's
    # earlier copy of v1 must not be served for it
    old_v1 = reg.path("router", "v1")
    other = tmp_path / "other-adapter"
    shutil.copytree(random_adapter, other)
    cfg = json.loads((other / "adapter_config.json").read_text())
    (other / "adapter_config.json").write_text(json.dumps({**cfg, "lora_alpha": 32}))
    reset_pg(pg_url)
    fresh = AdapterRegistry(pg_url)
    fresh.store.cache = reg.store.cache
    assert fresh.register("router", other, {"base_model": "smollm2-135m"}) == "v1"
    new_v1 = fresh.path("router", "v1")
    assert new_v1 != old_v1 and json.loads((new_v1 / "adapter" / "adapter_config.json")
                                           .read_text())["lora_alpha"] == 32
    fresh.store.close()
    reg.store.close()
    reg = AdapterRegistry(pg_url)
    reg.store.cache = tmp_path / "reader-cache"

    # files → PostgreSQL: versions, cards, promoted pointer and history
    files = AdapterRegistry(tmp_path / "adapters")
    files.register("triage", random_adapter, {"base_model": "smollm2-135m"},
                   base_gguf=embedded_gguf_path())
    files.register("triage", random_adapter, {"base_model": "smollm2-135m"},
                   base_gguf=embedded_gguf_path())
    files.promote("triage", "v1", {"accuracy": 0.5})
    files.promote("triage", "v2", {"accuracy": 0.7})
    assert reg.copy_from(files, ["triage"]) == {"triage": ["v1", "v2"]}
    assert reg.promoted("triage") == "v2"
    assert [h["action"] for h in reg.history("triage")] == ["promoted", "promoted"]
    assert reg.card("triage", "v2")["eval_scores"] == {"accuracy": 0.7}
    assert (reg.path("triage", "v1") / "adapter.gguf").read_bytes() == \
        (files.path("triage", "v1") / "adapter.gguf").read_bytes()
    with pytest.raises(ConfigError, match="already has versions"):
        reg.copy_from(files, ["triage"])

    # serving follows a rollback made by another process, within poll_s (1 s on PostgreSQL)
    served = reg.resolver()(smollm, "triage")
    assert served.version == "v2"
    r = subprocess.run([sys.executable, "-m", "slmflow", "adapters", "rollback", "triage"],
                       env={**os.environ, "SLMFLOW_ADAPTERS_URL": pg_url,
                            "SLMFLOW_HOME": str(tmp_path / "cli")},
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "triage now serves v1" in r.stdout
    time.sleep(reg.store.poll_s + 0.05)
    assert served.version == "v1"
    assert served.generate_sync("hi", settings=Settings(max_tokens=3)).model.adapter == \
        "triage@v1"
    reg.store.close()

    # configuration only: an agent naming its adapter loads it from the server's registry
    from slmflow.agents import Agent, set_adapter_resolver

    set_adapter_resolver(None)  # drop models resolved under another registry
    old = os.environ.get("SLMFLOW_ADAPTERS_URL")
    os.environ["SLMFLOW_ADAPTERS_URL"] = pg_url
    try:
        agent = Agent("triage", model=smollm, instructions="Answer briefly.", adapter="triage",
                      max_tokens=3)
        assert agent.run_sync("hi").model.adapter == "triage@v1"
    finally:
        set_adapter_resolver(None)
        if old is None:
            os.environ.pop("SLMFLOW_ADAPTERS_URL", None)
        else:
            os.environ["SLMFLOW_ADAPTERS_URL"] = old


def test_registry_bad_location_errors(tmp_path):
    from slmflow.finetune.registry_store import RegistryStoreError

    with pytest.raises(RegistryStoreError) as e:
        AdapterRegistry("postgresql://slm:secret@127.0.0.1:1/nowhere")
    assert "secret" not in str(e.value) and "127.0.0.1:1" in str(e.value)
    with pytest.raises(ConfigError, match="postgresql://"):
        AdapterRegistry("s3://bucket/adapters")
    with pytest.raises(ConfigError, match="invalid agent name"):
        AdapterRegistry(tmp_path).versions("../etc")


def test_bf16_is_on_only_where_it_pays(monkeypatch):
    """The CLI's default: bfloat16 on a GPU or a CPU with AVX-512 BF16 / AMX, float32 elsewhere
    (emulated bfloat16 made a LoRA run several times slower on an AVX2-only CPU)."""
    import builtins
    import io

    import torch

    from slmflow.finetune import trainer

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    real_open = builtins.open

    def fake(flags):
        def _open(path, *a, **k):
            if str(path) == "/proc/cpuinfo":
                return io.StringIO(f"flags\t: fpu sse2 avx2 {flags}\n")
            return real_open(path, *a, **k)
        return _open

    monkeypatch.setattr(builtins, "open", fake("fma"))
    assert trainer.bf16_fast() is False
    monkeypatch.setattr(builtins, "open", fake("avx512f avx512_bf16"))
    assert trainer.bf16_fast() is True
    monkeypatch.setattr(builtins, "open", fake("amx_bf16 amx_tile"))
    assert trainer.bf16_fast() is True
