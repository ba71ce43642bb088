"""PEFT LoRA adapter → GGUF LoRA file, so a fine-tuned agent runs on the fast llama.cpp path.

Why we write it ourselves: llama.cpp's ``convert_lora_to_gguf.py`` ships only in its source tree,
not in the installed llama-cpp-python package; the ``gguf`` package on PyPI writes GGUF files.
What the converter does for a llama-architecture base, and this module repeats:

* tensor names: ``base_model.model.model.layers.{i}.self_attn.q_proj.lora_A.weight`` →
  ``blk.{i}.attn_q.weight.lora_a`` (and ``lora_b``); the MLP and attention output likewise;
* q and k projections: llama.cpp stores their rows permuted for its rotary layout (HF's
  ``convert_hf_to_gguf`` applies ``permute`` to ``q_proj`` and ``k_proj``; transformers undoes
  it when it loads a GGUF). A LoRA delta ``B @ A`` on those rows must be permuted the same way,
  which means permuting the rows of ``B`` (A is untouched);
* metadata: ``general.type = adapter``, ``adapter.type = lora``, ``adapter.lora.alpha``, and the
  base's ``general.architecture``, which llama.cpp checks against the model it is loaded into.

Tensors are written as float32 (an r=16 q,v adapter for SmolLM2-135M is about 2 MB).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

from ..errors import ConfigError

_NAMES = {
    "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}
_PATTERN = re.compile(r"layers\.(\d+)\.(self_attn\.[qkvo]_proj|mlp\.(?:gate|up|down)_proj)"
                      r"\.lora_([AB])(?:\.default)?\.weight$")


def _permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's row order for rotary q/k weights (convert_hf_to_gguf's ``permute``)."""
    return (w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
            .swapaxes(1, 2).reshape(w.shape))


def _base_config(base_gguf: Path) -> dict:
    import gguf

    r = gguf.GGUFReader(str(base_gguf))
    arch = r.fields["general.architecture"].contents()
    get = lambda k: r.fields[f"{arch}.{k}"].contents()  # noqa: E731
    return {"arch": arch, "n_head": int(get("attention.head_count")),
            "n_head_kv": int(get("attention.head_count_kv"))}


def export_lora_gguf(adapter_dir: str | Path, base_gguf: str | Path, out_path: str | Path) -> Path:
    """Write the PEFT adapter in `adapter_dir` as a GGUF LoRA for the llama.cpp base `base_gguf`."""
    import gguf
    from safetensors.numpy import load_file

    adapter_dir, out_path = Path(adapter_dir), Path(out_path)
    cfg_path = adapter_dir / "adapter_config.json"
    weights = adapter_dir / "adapter_model.safetensors"
    if not cfg_path.is_file() or not weights.is_file():
        raise ConfigError("not a PEFT adapter folder (adapter_config.json and "
                          "adapter_model.safetensors expected)", where=str(adapter_dir))
    lcfg = json.loads(cfg_path.read_text())
    if lcfg.get("peft_type", "LORA") != "LORA":
        raise ConfigError(f"only LoRA adapters convert, got {lcfg.get('peft_type')}",
                          where=str(adapter_dir))
    base = _base_config(Path(base_gguf))
    if base["arch"] != "llama":
        raise ConfigError(f"GGUF export supports llama-architecture bases, got {base['arch']}",
                          where=str(base_gguf))
    tensors = load_file(str(weights))
    pairs: dict[str, dict[str, np.ndarray]] = {}
    for name, t in tensors.items():
        m = _PATTERN.search(name)
        if m is None:
            raise ConfigError(f"unexpected tensor {name!r} in the adapter (modules_to_save and "
                              "embedding LoRA are not supported)", where=str(adapter_dir))
        layer, module, ab = m.groups()
        key = f"blk.{layer}.{_NAMES[module]}.weight"
        w = t.astype(np.float32)
        if ab == "B" and module == "self_attn.q_proj":
            w = _permute(w, base["n_head"])
        elif ab == "B" and module == "self_attn.k_proj":
            w = _permute(w, base["n_head_kv"])
        pairs.setdefault(key, {})[ab] = w
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(out_path.name + ".partial")
    writer = gguf.GGUFWriter(str(tmp), base["arch"])
    writer.add_type(gguf.GGUFType.ADAPTER)
    writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
    writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, float(lcfg["lora_alpha"]))
    for key in sorted(pairs):
        if set(pairs[key]) != {"A", "B"}:
            raise ConfigError(f"{key}: lora_A or lora_B missing", where=str(adapter_dir))
        writer.add_tensor(key + ".lora_a", np.ascontiguousarray(pairs[key]["A"]))
        writer.add_tensor(key + ".lora_b", np.ascontiguousarray(pairs[key]["B"]))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    tmp.replace(out_path)
    return out_path
