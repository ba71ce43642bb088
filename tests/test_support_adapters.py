"""The support example's shipped LoRA adapters (router, extractor) on the real SmolLM2-135M.

What is proven here, on real model outputs: the adapters in examples/support/adapters/ load from
their path through the agents' default adapter resolver; their cards carry the lineage; the
fine-tuned router beats the zero-shot router on held-out eval rows; and ``--no-adapters`` really
serves the base model (no LoRA loaded, the base identity in every step).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EX = ROOT / "examples" / "support"
SPEC = EX / "workflow.yaml"
sys.path.insert(0, str(EX))

pytest.importorskip("llama_cpp")


def _eval_rows(file: str, per_label: int, key: str | None = None) -> list:
    """The first `per_label` rows of each label (or the first rows) of an eval file."""
    from slmflow.finetune.data import load_examples

    rows = load_examples(EX / "data" / file)
    if key is None:
        return rows[:per_label]
    seen: dict[str, int] = {}
    out = []
    for ex in rows:
        lab = ex.target[key]
        if seen.get(lab, 0) < per_label:
            seen[lab] = seen.get(lab, 0) + 1
            out.append(ex)
    return out


@pytest.fixture(scope="module")
def wf():
    from slmflow.workflow import load_workflow

    return load_workflow(SPEC)


def test_workflow_names_the_shipped_adapters_by_path(wf):
    for step, agent in (("router", "router"), ("extract", "extractor")):
        a = wf.agents[step]
        assert a.adapter == str((EX / "adapters" / agent).resolve())
        card = json.loads((Path(a.adapter) / "card.json").read_text())
        assert card["base_model"] == "smollm2-135m" and card["agent"] == agent
        assert len(card["data_hash"]) == 64 and card["schema_hint"] is False
        assert card["config"]["r"] == 8
        assert set(card["config"]["target_modules"]) <= {"q_proj", "k_proj", "v_proj", "o_proj"}
        assert card["eval_scores"]["accuracy"] > 0
        size = (Path(a.adapter) / "adapter.gguf").stat().st_size
        assert size < 5_000_000


def test_shipped_adapters_load_on_the_real_model(wf, smollm):
    from slmflow.agents import resolve_model
    from slmflow.models.base import SettingsOverride
    from slmflow.models.llamacpp import LlamaCppModel

    for step, label in (("router", "adapters/router"), ("extract", "adapters/extractor")):
        a = wf.agents[step]
        m = resolve_model(smollm, a.adapter, where=step)  # the agents' default resolver
        assert isinstance(m, SettingsOverride)  # trained on the bare prompt: no schema text
        assert isinstance(m.wrapped, LlamaCppModel) and m.wrapped.lora_path is not None
        assert m.info.identity == f"smollm2-135m+{label}"
    ext = wf.agents["extract"].with_model(smollm, adapter=wf.agents["extract"].adapter)
    out = ext.run_sync({"text": "URGENT: order K-3391 never arrived, account 551203."}).output
    assert (out.order_id, out.account_id, out.urgent) == ("K-3391", "551203", True)


def test_router_adapter_beats_the_zero_shot_router(wf, smollm):
    """Real outputs on 3 held-out rows per category: the adapter must be strictly better."""
    router = wf.agents["router"]
    cases = _eval_rows("router_eval.jsonl", 3, key="category")
    assert len(cases) == 15

    def accuracy(agent) -> float:
        hits = [agent.run_sync(ex.input).output.category == ex.target["category"]
                for ex in cases]
        return sum(hits) / len(hits)

    tuned = accuracy(router.with_model(smollm, adapter=router.adapter))
    base = accuracy(router.with_model(smollm))
    print(f"router accuracy on {len(cases)} held-out rows: adapter {tuned:.3f}, base {base:.3f}")
    assert tuned > base
    assert tuned >= 0.8


def test_no_adapters_resolver_serves_the_base_model(wf, smollm):
    from slmflow.agents import resolve_model, set_adapter_resolver
    from slmflow.finetune.registry import base_model_resolver

    set_adapter_resolver(base_model_resolver)
    try:
        m = resolve_model(smollm, wf.agents["router"].adapter, where="router")
        assert m is smollm and m.info.identity == "smollm2-135m" and m.lora_path is None
    finally:
        set_adapter_resolver(None)
    assert resolve_model(smollm, wf.agents["router"].adapter).info.identity != "smollm2-135m"


@pytest.mark.slow
def test_cli_run_no_adapters_runs_the_base_model():
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "SUPPORT_RETRIEVAL": "bm25"}

    def steps(*flags: str) -> dict:
        p = subprocess.run([str(Path(sys.executable).parent / "slmflow"), "run", str(SPEC),
                            "--json", *flags, "--input", "I was charged twice, account 88231."],
                           capture_output=True, text=True, env=env, timeout=300)
        assert p.returncode in (0, 1), p.stderr[-2000:]
        return {r["step"]: r["model"] for r in json.loads(p.stdout)["steps"]}

    base = steps("--no-adapters")
    assert base["router"] == base["extract"] == "smollm2-135m"
    tuned = steps()
    assert tuned["router"] == "smollm2-135m+adapters/router"
    assert tuned["extract"] == "smollm2-135m+adapters/extractor"


def test_path_adapter_errors_are_clear(tmp_path, smollm):
    from slmflow.errors import ConfigError
    from slmflow.finetune.registry import model_for_path

    with pytest.raises(ConfigError, match="adapter not found"):
        model_for_path(smollm, tmp_path / "nowhere")
    d = tmp_path / "other"
    d.mkdir()
    (d / "card.json").write_text(json.dumps({"base_model": "qwen2.5-coder-0.5b"}))
    with pytest.raises(ConfigError, match="trained on qwen2.5-coder-0.5b"):
        model_for_path(smollm, d)


def test_training_targets_follow_the_decoders_key_order():
    """llama.cpp's grammar emits required keys first; targets are trained in that order."""
    from llama_cpp.llama_grammar import json_schema_to_gbnf
    from support_schemas import Fields

    from slmflow.finetune.agent_train import decoder_order
    from slmflow.finetune.data import Example, target_text
    from slmflow.structured import OutputSpec

    root = [ln for ln in json_schema_to_gbnf(OutputSpec.build(Fields).schema_text).splitlines()
            if ln.startswith("root ::=")][0]
    grammar_keys = sorted(("urgent", "order_id", "account_id"), key=lambda k: root.find(
        k.replace("_", "-") + "-kv"))
    t = decoder_order({"order_id": "A-1042", "account_id": None, "urgent": True}, Fields)
    assert list(t) == grammar_keys == ["urgent", "order_id", "account_id"]
    assert target_text(Example("x", t)) == '{"urgent":true,"order_id":"A-1042","account_id":null}'
