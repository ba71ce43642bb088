"""The transformers backend: the embedded GGUF dequantized, llguidance constraints, PEFT adapters."""

from __future__ import annotations

from typing import Literal

import pytest
from pydantic import BaseModel

from slmflow import Settings
from slmflow.models.catalog import embedded_gguf_path, resolve
from slmflow.models.transformers import TransformersModel


class Route(BaseModel):
    intent: Literal["refund", "shipping", "account"]
    urgent: bool


@pytest.fixture(scope="module")
def hf_model(slmflow_home):
    return resolve("smollm2-135m-hf").load()


def test_loads_from_gguf_and_caches_dequantized_base(hf_model, slmflow_home):
    from pathlib import Path

    cached = Path(slmflow_home) / "models" / f"{embedded_gguf_path().stem}-fp32"
    assert (cached / "model.safetensors").is_file() and (cached / ".complete").is_file()
    r = hf_model.generate_sync("What is the capital of France? Answer in one word.",
                               settings=Settings(max_tokens=12))
    assert "Paris" in r.text and r.model.provider == "transformers"
    assert 0 < r.confidence <= 1 and r.usage.output_tokens > 0


def test_same_greedy_answer_as_llama_cpp_for_a_short_prompt(hf_model, smollm):
    """Both backends run the same weights (Q4_1 vs its dequantized fp32 copy)."""
    a = hf_model.generate_sync("Name a primary color. One word.", settings=Settings(max_tokens=4))
    b = smollm.generate_sync("Name a primary color. One word.", settings=Settings(max_tokens=4))
    assert a.text.strip().split()[0] == b.text.strip().split()[0]


def test_schema_constraint_with_llguidance(hf_model):
    for text in ["I want my money back for order 12", "My parcel is lost",
                 "I forgot my password"]:
        r = hf_model.generate_sync(text, schema=Route, settings=Settings(max_tokens=40))
        assert isinstance(r.parsed, Route), r.text


def test_a_narrower_constraint_steers_transformers_too(hf_model):
    """`Settings.constraint` narrows decoding on this backend as on llama.cpp: the intent is
    the one the constraint leaves, the answer still a valid `Route`."""
    import json

    narrow = json.dumps({"type": "object", "properties": {
        "intent": {"enum": ["account"]}, "urgent": {"type": "boolean"}},
        "required": ["intent", "urgent"]})
    r = hf_model.generate_sync("My parcel is late, where is it?", schema=Route,
                               settings=Settings(max_tokens=24, constraint=narrow))
    assert r.parsed.intent == "account"


def test_peft_adapter_changes_the_model_and_its_identity(hf_model, tmp_path):
    import torch
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    cfg = LoraConfig(r=4, lora_alpha=64, target_modules=["q_proj", "v_proj"],
                     init_lora_weights=False)
    peft_model = get_peft_model(hf_model.model, cfg)
    peft_model.save_pretrained(tmp_path / "router-v1")
    hf_model.model = peft_model.unload()  # leave the shared fixture's base untouched

    with_adapter = TransformersModel(embedded_gguf_path(), name="smollm2-135m-hf", gguf=True,
                                     adapter_path=tmp_path / "router-v1").load()
    assert with_adapter.info.identity == "smollm2-135m-hf+router-v1"
    prompt = "Name a primary color. One word."
    base = hf_model.generate_sync(prompt, settings=Settings(max_tokens=6))
    tuned = with_adapter.generate_sync(prompt, settings=Settings(max_tokens=6))
    assert tuned.model.adapter == "router-v1"
    assert tuned.token_logprobs != base.token_logprobs


def test_missing_adapter_is_a_clear_error(tmp_path):
    from slmflow import ModelNotFoundError

    with pytest.raises(ModelNotFoundError):
        TransformersModel(embedded_gguf_path(), adapter_path=tmp_path / "missing")
