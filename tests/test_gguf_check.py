"""GGUF files are checked in Python before llama.cpp opens them (issue 15, item 2): a corrupt
adapter (random bytes, a truncated copy of a shipped adapter, a bogus tensor count or data
offset, an adapter for another model) is a `ModelLoadError` naming the file and the reason, not a
segfault of the process at the first generation."""

from __future__ import annotations

import random
import struct
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from slmflow.errors import ModelLoadError
from slmflow.models.gguf_check import check_gguf_files, check_lora_matches, read_gguf

ADAPTERS = Path(__file__).parent.parent / "examples" / "support" / "adapters"
ROUTER = ADAPTERS / "router" / "adapter.gguf"
STR, F32, U32, ARR = 8, 6, 4, 9


def model_path() -> Path:
    from slmflow.models.catalog import resolve

    return resolve("smollm2-135m").path


def _s(text: str | bytes) -> bytes:
    b = text.encode() if isinstance(text, str) else text
    return struct.pack("<Q", len(b)) + b


def write_gguf(path: Path, kvs: list, tensors: list, *, version: int = 3, alignment: int = 32,
               n_tensors: int | None = None, n_kv: int | None = None,
               offsets: list[int] | None = None) -> Path:
    """A GGUF file written byte by byte, so that each field can be made wrong on purpose.
    kvs: (key, type, value); tensors: (name, shape in ggml order, ggml type, data bytes)."""
    out = bytearray(b"GGUF") + struct.pack("<IQQ", version,
                                           len(tensors) if n_tensors is None else n_tensors,
                                           len(kvs) if n_kv is None else n_kv)
    for key, vtype, val in kvs:
        out += _s(key) + struct.pack("<I", vtype)
        if vtype == STR:
            out += _s(val)
        elif vtype == F32:
            out += struct.pack("<f", val)
        elif vtype == U32:
            out += struct.pack("<I", val)
        elif vtype == ARR:
            etype, count, body = val
            out += struct.pack("<IQ", etype, count) + body
        else:
            out += val  # raw bytes for odd cases
    pos, auto = 0, []
    for _, _, _, data in tensors:
        auto.append(pos)
        pos += -(-len(data) // alignment) * alignment
    for i, (name, shape, ttype, _) in enumerate(tensors):
        out += _s(name) + struct.pack("<I", len(shape))
        out += b"".join(struct.pack("<Q", d) for d in shape)
        out += struct.pack("<IQ", ttype, (offsets or auto)[i])
    out += b"\0" * (-len(out) % alignment)
    for _, _, _, data in tensors:
        out += data + b"\0" * (-len(data) % alignment)
    path.write_bytes(bytes(out))
    return path


def router_parts() -> tuple[list, list]:
    """The shipped router adapter as (kvs, tensors) for `write_gguf`."""
    info = read_gguf(ROUTER)
    raw = ROUTER.read_bytes()
    kvs = [(k, info.value_types[k], v) for k, v in info.metadata.items()]
    tensors = [(t.name, t.shape, t.type,
                raw[info.data_offset + t.offset:info.data_offset + t.offset + t.nbytes])
               for t in sorted(info.tensors.values(), key=lambda t: t.offset)]
    return kvs, tensors


def patched(tmp_path: Path, name: str, edit) -> Path:
    data = bytearray(ROUTER.read_bytes())
    edit(data)
    p = tmp_path / f"{name}.gguf"
    p.write_bytes(bytes(data))
    return p


def first_tensor_info(data: bytes) -> int:
    """Offset of the first tensor info in the router adapter (after its 4 key/values)."""
    info = read_gguf(ROUTER)
    pos = 24
    for _ in info.metadata:
        pos += 8 + struct.unpack_from("<Q", data, pos)[0]
        vtype = struct.unpack_from("<I", data, pos)[0]
        pos += 4
        pos += 8 + struct.unpack_from("<Q", data, pos)[0] if vtype == STR else 4
    return pos


def test_shipped_files_pass_and_a_rewrite_is_identical(tmp_path):
    m = read_gguf(model_path())
    assert m.architecture == "llama" and len(m.tensors) > 100 and m.version == 3
    for agent in ("router", "extractor"):
        check_gguf_files(model_path(), ADAPTERS / agent / "adapter.gguf")
    a = read_gguf(ROUTER)
    assert a.metadata["general.type"] == "adapter" and len(a.tensors) == 240
    # the test writer writes the shipped adapter back byte for byte: the faults below differ
    # from a valid file only where each test says
    kvs, tensors = router_parts()
    assert write_gguf(tmp_path / "same.gguf", kvs, tensors).read_bytes() == ROUTER.read_bytes()


def _cases(tmp_path: Path) -> list[tuple[Path, str]]:
    size = ROUTER.stat().st_size
    raw = ROUTER.read_bytes()
    ti = first_tensor_info(raw)
    name_len = struct.unpack_from("<Q", raw, ti)[0]
    n_dims_at = ti + 8 + name_len
    type_at = n_dims_at + 4 + 8 * 2
    offset_at = type_at + 4
    second = offset_at + 8
    second_offset_at = second + 8 + struct.unpack_from("<Q", raw, second)[0] + 4 + 16 + 4
    kvs, tensors = router_parts()
    cases: list[tuple[Path, str]] = []

    def add(p: Path, reason: str) -> None:
        cases.append((p, reason))

    rnd = random.Random(0)
    (tmp_path / "random.gguf").write_bytes(bytes(rnd.getrandbits(8) for _ in range(100_000)))
    add(tmp_path / "random.gguf", "first bytes are not 'GGUF'")
    (tmp_path / "empty.gguf").write_bytes(b"")
    add(tmp_path / "empty.gguf", "empty")
    for cut in (3, 10, 30, 100, ti + 5, 5000, 1_000_000, size - 1):
        p = tmp_path / f"trunc{cut}.gguf"
        p.write_bytes(raw[:cut])
        add(p, "past the end|first bytes|bogus .* count")
    add(patched(tmp_path, "count", lambda d: d.__setitem__(slice(8, 16),
                                                          struct.pack("<Q", 2 ** 40))),
        "bogus tensor count 1099511627776")
    add(patched(tmp_path, "count1", lambda d: d.__setitem__(slice(8, 16),
                                                           struct.pack("<Q", 241))),
        "not a valid GGUF file")
    add(patched(tmp_path, "kvcount", lambda d: d.__setitem__(slice(16, 24),
                                                            struct.pack("<Q", 2 ** 33))),
        "bogus key/value count")
    add(patched(tmp_path, "offset", lambda d: d.__setitem__(slice(offset_at, offset_at + 8),
                                                           struct.pack("<Q", 2 ** 50))),
        "past the end of the file")
    add(patched(tmp_path, "offset_neg", lambda d: d.__setitem__(slice(offset_at, offset_at + 8),
                                                               b"\xe0" + b"\xff" * 7)),
        "past the end of the file")
    add(patched(tmp_path, "misaligned", lambda d: d.__setitem__(
        slice(second_offset_at, second_offset_at + 8),
        struct.pack("<Q", struct.unpack_from("<Q", raw, second_offset_at)[0] + 4))),
        "not a multiple of the alignment")
    add(patched(tmp_path, "overlap", lambda d: d.__setitem__(
        slice(second_offset_at, second_offset_at + 8), struct.pack("<Q", 0))), "overlaps")
    add(patched(tmp_path, "ndims", lambda d: d.__setitem__(slice(n_dims_at, n_dims_at + 4),
                                                          struct.pack("<I", 7))),
        "7 dimensions")
    add(patched(tmp_path, "ttype", lambda d: d.__setitem__(slice(type_at, type_at + 4),
                                                          struct.pack("<I", 200))),
        "unknown ggml type 200")
    add(patched(tmp_path, "dim", lambda d: d.__setitem__(slice(n_dims_at + 4, n_dims_at + 12),
                                                        b"\xff" * 8)), "negative dimension")
    add(patched(tmp_path, "keylen", lambda d: d.__setitem__(slice(24, 32),
                                                           struct.pack("<Q", 2 ** 62))),
        "runs past the end")
    add(patched(tmp_path, "v1", lambda d: d.__setitem__(slice(4, 8), struct.pack("<I", 1))),
        "version 1")
    add(patched(tmp_path, "v99", lambda d: d.__setitem__(slice(4, 8), struct.pack("<I", 99))),
        "unsupported GGUF version 99")
    add(patched(tmp_path, "bigendian", lambda d: d.__setitem__(slice(4, 8),
                                                              struct.pack(">I", 3))),
        "big-endian")

    def w(name: str, reason: str, kv=None, ts=None, **kw) -> None:
        add(write_gguf(tmp_path / f"{name}.gguf", kvs if kv is None else kv,
                       tensors if ts is None else ts, **kw), reason)

    w("strings", "claims 1099511627776 strings",
      kvs + [("tokenizer.ggml.tokens", ARR, (STR, 2 ** 40, _s("a")))])
    w("nested", "array of arrays", kvs + [("x.nested", ARR, (ARR, 1, b""))])
    w("vtype", "unknown value type 77", kvs + [("x.odd", 77, b"")])
    w("dupkey", "duplicate key", kvs + [kvs[0]])
    w("align", "power of two", kvs + [("general.alignment", U32, 24)])
    w("longname", "too long name", ts=[("x" * 70 + ".lora_a",) + tensors[0][1:]] + tensors[1:])
    w("duptensor", "duplicate tensor", ts=tensors + [tensors[0]])
    w("rowblock", "not a multiple of the block size",
      ts=[(tensors[0][0], (33, 8), 8, b"\0" * 34 * 8)] + tensors[1:])
    # readable, but llama.cpp would refuse it on this model (and the binding would crash)
    swap = {"general.architecture": "qwen2"}
    w("arch", "architecture 'qwen2', the model is 'llama'",
      [(k, t, swap.get(k, v)) for k, t, v in kvs])
    w("notadapter", "general.type is 'model'",
      [(k, t, "model" if k == "general.type" else v) for k, t, v in kvs])
    w("notlora", "adapter.type is 'control_vector'",
      [(k, t, "control_vector" if k == "adapter.type" else v) for k, t, v in kvs])
    w("alpha", "alpha is not a float32",
      [(k, STR, "16") if k == "adapter.lora.alpha" else (k, t, v) for k, t, v in kvs])
    w("archtype", "general.architecture is a uint32",
      [(k, U32, 1) if k == "general.architecture" else (k, t, v) for k, t, v in kvs])
    w("missing", "blk.99.attn_k.weight does not exist in the model",
      ts=[(t[0].replace("blk.0.", "blk.99."),) + t[1:] for t in tensors])
    w("unpaired", "without lora_b", ts=[t for t in tensors if t[0] != tensors[1][0]])
    w("suffix", "neither .lora_a nor .lora_b",
      ts=tensors + [("blk.0.attn_k.weight.lora_c", (4,), 0, b"\0" * 16)])
    a0 = tensors[0]
    w("shape", "do not fit the model's",
      ts=[(a0[0], (a0[1][0] // 2, a0[1][1]), a0[2], a0[3][:len(a0[3]) // 2])] + tensors[1:])
    w("empty_adapter", "holds no LoRA tensors", ts=[])
    add(model_path(), "general.type is 'model'")  # a model file given as the adapter
    return cases


def test_corrupt_adapters_are_refused_with_the_file_and_the_reason(tmp_path):
    for path, reason in _cases(tmp_path):
        with pytest.raises(ModelLoadError, match=reason) as e:
            check_gguf_files(model_path(), path)
        assert str(path) in str(e.value), (path, e.value)


def test_work_is_bounded_whatever_the_counts_say(tmp_path, monkeypatch):
    """The loops a file's length allows are capped too (strings in arrays, tensors), so a huge
    crafted file cannot keep the check busy for minutes or fill memory."""
    from slmflow.models import gguf_check

    kvs, tensors = router_parts()
    monkeypatch.setattr(gguf_check, "MAX_STRINGS", 10)
    p = write_gguf(tmp_path / "s.gguf", kvs + [("tokenizer.ggml.tokens", ARR,
                                                 (STR, 11, _s("a") * 11))], tensors)
    with pytest.raises(ModelLoadError, match="more than 10 strings"):
        read_gguf(p)
    monkeypatch.setattr(gguf_check, "MAX_TENSORS", 100)
    monkeypatch.setattr(gguf_check, "_CACHE", {})  # read earlier in this session
    with pytest.raises(ModelLoadError, match="bogus tensor count 240"):
        read_gguf(ROUTER)


def test_corrupt_model_file_is_refused(tmp_path):
    raw = model_path().read_bytes()[:2_000_000]
    (tmp_path / "model.gguf").write_bytes(raw)
    with pytest.raises(ModelLoadError, match="past the end of the file") as e:
        read_gguf(tmp_path / "model.gguf")
    assert "model.gguf" in str(e.value)
    (tmp_path / "model.gguf").write_bytes(raw[:500_000])  # inside the vocabulary's strings
    with pytest.raises(ModelLoadError, match=r"tokenizer\.ggml\.tokens.*\[\d+\] runs past the end"):
        read_gguf(tmp_path / "model.gguf")


def test_mutated_headers_give_a_model_load_error_or_pass(tmp_path):
    """Seeded random byte changes in the header and tensor infos: every outcome is a pass or a
    ModelLoadError (no other exception, no hang, no unbounded allocation)."""
    raw = ROUTER.read_bytes()
    end = read_gguf(ROUTER).data_offset
    model = read_gguf(model_path())
    rnd = random.Random(15)
    outcomes = {"ok": 0, "refused": 0}
    p = tmp_path / "m.gguf"
    for i in range(300):
        data = bytearray(raw[:end + 4096]) if i % 3 == 0 else bytearray(raw)
        for _ in range(rnd.randint(1, 4)):
            j = rnd.randrange(0, 512) if i % 2 else rnd.randrange(0, end)
            data[j] = rnd.getrandbits(8)
        p.write_bytes(bytes(data))
        try:
            check_lora_matches(model, read_gguf(p))
            outcomes["ok"] += 1
        except ModelLoadError:
            outcomes["refused"] += 1
    assert outcomes["refused"] > 100, outcomes


def test_llamacpp_model_refuses_a_corrupt_adapter_at_construction(tmp_path):
    from slmflow.models.llamacpp import LlamaCppModel

    bad = tmp_path / "adapter.gguf"
    bad.write_bytes(ROUTER.read_bytes()[:1_000_000])
    with pytest.raises(ModelLoadError, match="not a valid GGUF file") as e:
        LlamaCppModel(model_path(), lora_path=bad)
    assert str(bad) in str(e.value)
    junk = tmp_path / "model.gguf"
    junk.write_bytes(b"\x00" * 4096)
    with pytest.raises(ModelLoadError, match="model.gguf"):
        LlamaCppModel(junk)
    LlamaCppModel(model_path(), lora_path=ROUTER)  # a valid adapter still constructs


@pytest.mark.slow
def test_a_corrupt_adapter_does_not_crash_the_process(tmp_path):
    """In a child process (a crash must not take pytest with it): generating with a corrupt
    adapter raises ModelLoadError; with the Python check switched off, the check after llama.cpp
    loads (a NULL adapter) still does. Before the fix the child died with SIGSEGV (rc 139)."""
    bad = tmp_path / "adapter.gguf"
    bad.write_bytes(random.Random(1).randbytes(200_000))
    script = textwrap.dedent(f"""
        from slmflow.errors import ModelLoadError
        from slmflow.models.catalog import resolve
        from slmflow.models.llamacpp import LlamaCppModel
        base = resolve("smollm2-135m").path
        for off in (False, True):
            if off:
                import slmflow.models.gguf_check as g
                g.check_gguf_files = lambda *a, **k: None
            try:
                LlamaCppModel(base, lora_path={str(bad)!r}).generate_sync("hi")
                print("generated")
            except ModelLoadError as e:
                print("refused:", e)
    """)
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, (r.returncode, r.stdout, r.stderr[-2000:])
    lines = r.stdout.strip().splitlines()
    assert len(lines) == 2 and "not a valid GGUF file" in lines[0], r.stdout
    assert "llama.cpp refused the LoRA adapter" in lines[1], r.stdout


# ---- a real `slmflow serve` whose registry holds corrupt adapters -----------------------------

WORKFLOW = """
name: wf
models: {default: smollm2-135m}
agents:
  router: {adapter: router, instructions: "Answer in one word.", prompt: "{input}", max_tokens: 3}
  broken: {adapter: broken, instructions: "Answer in one word.", prompt: "{input}", max_tokens: 3}
  tampered: {adapter: tampered, instructions: "Answer in one word.", prompt: "{input}",
             max_tokens: 3}
steps:
  - name: all
    parallel:
      - {name: router, agent: router, output_key: a}
      - {name: broken, agent: broken, output_key: b}
      - {name: tampered, agent: tampered, output_key: c}
output: a
"""


@pytest.mark.slow
def test_serve_answers_an_error_for_a_corrupt_adapter_and_stays_up(tmp_path):
    """`slmflow serve` with a registry holding a random-bytes adapter (registered so, its
    checksum matches) and a shipped adapter changed on disk after registration: a request to
    either agent gets a 503 naming the file and the reason; the server answers the next request
    and /healthz. Before the fix the first request killed the server (SIGSEGV, rc 139)."""
    import os
    import shutil

    import httpx

    from slmflow.finetune.registry import AdapterRegistry
    from slmflow.gateway.auth import hash_key

    from .conftest import free_port, wait_http

    home = tmp_path / "home"
    reg = AdapterRegistry(home / "adapters")
    card = {"base_model": "smollm2-135m", "schema_hint": True}
    for agent, data in (("router", ROUTER.read_bytes()),
                        ("broken", random.Random(2).randbytes(300_000)),
                        ("tampered", ROUTER.read_bytes())):
        staged = tmp_path / f"staged-{agent}"
        staged.mkdir()
        (staged / "adapter.gguf").write_bytes(data)
        assert reg.store.add_version(agent, staged, lambda v: card) == "v1"
        reg.promote(agent, "v1", {"accuracy": 1.0})
    tampered = home / "adapters" / "tampered" / "v1" / "adapter.gguf"
    tampered.write_bytes(ROUTER.read_bytes()[:1_000_000])
    (tmp_path / "wf.yaml").write_text(WORKFLOW)
    cfg = tmp_path / "gateway.yaml"
    cfg.write_text(textwrap.dedent(f"""
        call_log: sqlite:///{tmp_path / 'calls.db'}
        models: {{slm: {{model: smollm2-135m}}}}
        workflows: {{wf: {{path: {tmp_path / 'wf.yaml'}}}}}
        cache: {{enabled: false}}
        auth: {{keys: [{{name: t, sha256: {hash_key('sk-test')}}}]}}
    """))
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = {**os.environ, "SLMFLOW_HOME": str(home), "SLMFLOW_TRACING": "off"}
    env.pop("SLMFLOW_ADAPTERS_URL", None)
    log = tmp_path / "serve.log"
    exe = shutil.which("slmflow", path=str(Path(sys.executable).parent)) or "slmflow"
    with open(log, "w") as out:
        proc = subprocess.Popen([exe, "serve", "--config", str(cfg), "--port", str(port),
                                 "--log-level", "warning"], env=env, stdout=out,
                                stderr=subprocess.STDOUT)
    try:
        wait_http(f"{base}/healthz", proc, log)
        c = httpx.Client(base_url=base, headers={"Authorization": "Bearer sk-test"}, timeout=120)

        def ask(model: str) -> httpx.Response:
            return c.post("/v1/chat/completions", json={
                "model": model, "max_tokens": 3,
                "messages": [{"role": "user", "content": "Say hi"}]})

        for _ in range(2):
            r = ask("wf.broken")
            assert r.status_code == 503, (r.status_code, r.text, log.read_text()[-2000:])
            msg = r.json()["error"]["message"]
            assert "broken/v1/adapter.gguf is not a valid GGUF file" in msg
            assert "first bytes are not 'GGUF'" in msg
            assert proc.poll() is None, log.read_text()[-2000:]
        r = ask("wf.tampered")
        assert r.status_code == 503, (r.status_code, r.text)
        assert "tampered@v1/adapter.gguf" in r.json()["error"]["message"]
        assert "checksum" in r.json()["error"]["message"]
        assert ask("wf.router").status_code == 200  # a valid adapter from the same registry
        r = ask("slm")
        assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"]
        assert httpx.get(f"{base}/healthz", timeout=10).status_code == 200
        assert proc.poll() is None
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
    assert proc.returncode in (0, -15), (proc.returncode, log.read_text()[-2000:])
