"""`slmflow deploy`: one server, one base, an adapter per agent, addressed by name.

The llama.cpp path runs for real: the support example's shipped router adapter is served by
`python -m llama_cpp.server` (config written by `slmflow deploy llamacpp`) on loopback, and the
router agent of the generated workflow copy (models pointing at the server, adapters unchanged)
must answer exactly as the same agent does in-process with llama.cpp + the GGUF LoRA. The vLLM
launch file is checked for content only (vLLM needs a GPU; none in this project's CI)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import free_port, wait_http

ROOT = Path(__file__).resolve().parents[1]
SUPPORT = ROOT / "examples" / "support"
TICKETS = ["My order A-1042 arrived broken, I want a refund",
           "Where is my parcel? It is a week late",
           "I was charged twice for my subscription",
           "How do I change the email on my account?"]


@pytest.fixture
def support_copy(tmp_path):
    """The support example in a temporary folder (the overlay is written beside the YAML)."""
    import shutil

    d = tmp_path / "support"
    shutil.copytree(SUPPORT, d, ignore=shutil.ignore_patterns("__pycache__", "*.vllm.yaml",
                                                              "*.llamacpp.yaml"))
    return d


def _start(config: Path, url: str, log: Path) -> subprocess.Popen:
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "llama_cpp.server", "--config_file",
                                 str(config)], stdout=out, stderr=subprocess.STDOUT)
    wait_http(f"{url}/models", proc, log)
    return proc


@pytest.mark.slow
def test_llamacpp_server_serves_the_agents_adapters_by_name(support_copy, tmp_path, smollm):
    from typer.testing import CliRunner

    from slmflow.cli import app
    from slmflow.finetune.agent_train import find_agent

    port = free_port()
    out = tmp_path / "deploy"
    r = CliRunner().invoke(app, ["deploy", "llamacpp", "--workflow",
                                 str(support_copy / "workflow.yaml"), "--out", str(out),
                                 "--port", str(port)])
    assert r.exit_code == 0, r.stdout
    cfg = json.loads((out / "llamacpp.json").read_text())
    aliases = {m["model_alias"]: m.get("lora_path") for m in cfg["models"]}
    assert aliases["smollm2-135m"] is None
    assert aliases["adapters-router"].endswith("adapters/router/adapter.gguf")
    assert aliases["adapters-extractor"].endswith("adapters/extractor/adapter.gguf")
    overlay = support_copy / "workflow.llamacpp.yaml"
    assert f"openai:smollm2-135m@http://127.0.0.1:{port}/v1" in overlay.read_text()

    local = find_agent(support_copy / "workflow.yaml", "router")
    served = find_agent(overlay, "router")
    assert served.adapter == local.adapter  # configuration only: the agent is unchanged
    url = f"http://127.0.0.1:{port}/v1"
    proc = _start(out / "llamacpp.json", url, tmp_path / "server.log")
    try:
        from dataclasses import replace

        differs = 0
        for text in TICKETS:
            a = local.run_sync({"text": text})
            b = served.run_sync({"text": text})
            assert b.model.adapter == a.model.adapter and b.model.provider != a.model.provider
            assert b.output == a.output, text  # same weights, same prompt, greedy: same answer
            zero_shot = replace(served, adapter=None).run_sync({"text": text})
            differs += zero_shot.output != b.output
        assert differs, "the server answered as the base model: the adapter was not applied"
        from slmflow.models.catalog import resolve

        base = resolve(f"openai:smollm2-135m@{url}")  # agents without an adapter: the base
        assert base.generate_sync("Say hi.").text
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_vllm_launch_registers_every_version(tmp_path, smollm):
    """A registry adapter is deployed with all its versions (promotion and rollback switch the
    served name without a restart); the rank and the base are taken from the cards."""
    import shutil

    from slmflow.finetune.registry import AdapterRegistry
    from slmflow.scale import plan_deployment, vllm_files

    reg = AdapterRegistry(tmp_path / "adapters")
    peft = tmp_path / "peft"
    peft.mkdir()
    (peft / "adapter_config.json").write_text(json.dumps({"r": 4, "peft_type": "LORA"}))
    card = {"base_model": "smollm2-135m", "config": {"r": 4}}
    for _ in range(2):
        reg.register("triage", peft, card)
    wf = tmp_path / "triage.yaml"
    shutil.copy(ROOT / "examples" / "loop" / "loop_schemas.py", tmp_path)
    wf.write_text((ROOT / "examples" / "loop" / "triage.yaml").read_text())
    plan = plan_deployment(wf, reg)
    assert [a.served_name for a in plan.adapters] == ["triage-v1", "triage-v2"]
    files = vllm_files(plan, base_model="/models/smollm2-135m-fp32", port=8001)
    sh = files["vllm.sh"]
    assert "vllm serve /models/smollm2-135m-fp32" in sh and "--enable-lora" in sh
    assert "--max-loras 2 --max-lora-rank 8" in sh  # rank 4 rounded up to what vLLM accepts and "--served-model-name smollm2-135m" in sh
    mods = [json.loads(line.split("'")[1]) for line in sh.splitlines() if "--lora-modules" in line]
    assert [m["name"] for m in mods] == ["triage-v1", "triage-v2"]
    assert mods[0]["path"] == str(reg.path("triage", "v1") / "adapter")
    overlay = Path(next(k for k in files if k.endswith(".vllm.yaml")))
    assert "openai:smollm2-135m@http://127.0.0.1:8001/v1" in files[str(overlay)]


def test_deploy_refuses_what_it_cannot_serve(support_copy, tmp_path):
    from slmflow.errors import ConfigError
    from slmflow.scale import plan_deployment, vllm_files

    plan = plan_deployment(support_copy / "workflow.yaml")
    with pytest.raises(ConfigError, match="no PEFT folder"):  # the example ships GGUF only
        vllm_files(plan, base_model="x")
    bad = support_copy / "bad.yaml"
    bad.write_text((support_copy / "workflow.yaml").read_text().replace(
        "adapter: adapters/router", "adapter: nobody"))
    with pytest.raises(ConfigError, match="no registered version"):
        plan_deployment(bad)
