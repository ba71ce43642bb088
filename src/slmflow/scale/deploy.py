"""`slmflow deploy`: serve a workflow's agents and their LoRA adapters from one shared server.

Why one server and many adapters: every agent of a workflow is usually the same small base model
with its own LoRA adapter. vLLM's multi-LoRA serving (and llama.cpp's server with model aliases)
keeps one base in memory and applies the adapter per request, addressed by the request's ``model``
field. So a deployment is (a) a launch command that registers every adapter under a served name and
(b) a copy of the workflow whose ``models:`` point at the server (``openai:<base>@<url>``). The
agents keep their ``adapter:`` lines; on an OpenAI-compatible base the adapter resolver sends the
request to the adapter's served name (`slmflow.finetune.registry.served_adapter_name`), with the
same prompt rules as in-process (an adapter trained without the schema text is served without it).
No workflow code changes: configuration only.

Registry adapters are deployed with every version (``triage-v1``, ``triage-v2``, ...): promotion
and rollback switch the served name at the next call, with no server restart. Adapters given as
paths are deployed under their path label.

    slmflow deploy vllm     --workflow wf.yaml --out deploy/ [--base-model HuggingFaceTB/SmolLM2-135M-Instruct]
    slmflow deploy llamacpp --workflow wf.yaml --out deploy/

vLLM needs a GPU: its launch file is written here but was not run on this project's CPU machines;
the llama.cpp server path runs the same client code and is tested end to end. One difference
remains there: llama-cpp-python's server applies ``repeat_penalty=1.1`` unless a request says
otherwise, so a long greedy answer can differ from in-process llama.cpp (short structured outputs,
as the adapters' routers and extractors give, matched in the test).
"""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ConfigError

__all__ = ["ServedAdapter", "DeployPlan", "plan_deployment", "vllm_files", "llamacpp_files",
           "write_deployment"]


# the values vLLM's --max-lora-rank accepts (vllm/config/lora.py)
VLLM_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)


@dataclass(frozen=True)
class ServedAdapter:
    served_name: str  # the `model` field a request uses
    agent: str
    adapter: str  # as the registry or the workflow names it (triage@v2, /abs/adapters/router)
    peft_dir: Path  # PEFT folder (vLLM loads this)
    gguf: Path | None  # GGUF LoRA (llama.cpp loads this)
    rank: int | None
    base_model: str | None  # the catalog name the adapter was trained on


@dataclass
class DeployPlan:
    workflow: Path
    models: dict[str, str]  # the workflow's model names -> catalog names
    bases: list[str]  # catalog names of the base models the agents use
    adapters: list[ServedAdapter] = field(default_factory=list)

    @property
    def max_rank(self) -> int:
        """The adapters' largest rank, rounded up to a value vLLM accepts for --max-lora-rank."""
        r = max([a.rank for a in self.adapters if a.rank] or [16])
        return next((v for v in VLLM_RANKS if v >= r), r)


def _card_rank(card: dict[str, Any]) -> int | None:
    return (card.get("config") or {}).get("r")


def plan_deployment(workflow: str | Path, registry: Any = None) -> DeployPlan:
    """Which base models and adapters a workflow's agents need served."""
    import yaml

    from ..finetune.registry import AdapterRegistry, is_adapter_path, served_adapter_name
    from ..workflow import load_workflow

    path = Path(workflow)
    wf = load_workflow(path)  # validates the spec (file:line errors)
    raw = yaml.safe_load(path.read_text()) or {}
    models = {k: (v if isinstance(v, str) else v.get("model")) for k, v in
              (raw.get("models") or {}).items()}
    reg = registry or AdapterRegistry()
    plan = DeployPlan(path, models, [])
    seen: set[str] = set()
    for step in wf.steps.values():
        agent = step.agent
        if agent is None:
            continue
        base = agent.model if isinstance(agent.model, str) else agent.model.info.name
        if base not in plan.bases:
            plan.bases.append(base)
        ad = agent.adapter
        if not ad:
            continue
        if is_adapter_path(ad):
            p = Path(ad)
            card = json.loads((p / "card.json").read_text()) if (p / "card.json").is_file() \
                else {}
            label = "/".join(p.resolve().parts[-2:]) if p.is_dir() else p.stem
            entries = [(label, p / "adapter" if p.is_dir() else p.with_suffix(""),
                        p / "adapter.gguf" if p.is_dir() else p, card)]
        else:
            name, _, pinned = ad.partition("@")
            versions = [pinned] if pinned else reg.versions(name)
            if not versions:
                raise ConfigError(f"agent {agent.name}: adapter {ad!r} has no registered "
                                  "version to deploy", where=str(path))
            entries = [(f"{name}@{v}", reg.path(name, v) / "adapter",
                        reg.path(name, v) / "adapter.gguf", reg.card(name, v))
                       for v in versions]
        for label, peft, gguf, card in entries:
            served = served_adapter_name(label)
            if served in seen:
                continue
            seen.add(served)
            plan.adapters.append(ServedAdapter(
                served, agent.name, label, peft.resolve(),
                gguf.resolve() if gguf and gguf.is_file() else None, _card_rank(card),
                card.get("base_model")))
    if len(plan.bases) > 1:
        raise ConfigError(f"the agents use several base models ({', '.join(plan.bases)}): one "
                          "multi-LoRA server serves one base; deploy one server per base",
                          where=str(path))
    return plan


def _overlay(plan: DeployPlan, url: str) -> str:
    """The workflow YAML with every model pointing at the server, edited line by line (a YAML
    round trip would reorder keys, drop comments and turn ``on:`` into ``true:``)."""
    import re

    from ..workflow.spec import load_yaml_with_lines

    text = plan.workflow.read_text(encoding="utf-8")
    data, lines = load_yaml_with_lines(text, str(plan.workflow))
    out = text.splitlines()
    served_base = plan.bases[0] if plan.bases else "base"
    spec = f"openai:{served_base}@{url}"
    for key, value in (data.get("models") or {}).items():
        n = lines[("models", key)] - 1
        if isinstance(value, dict):  # {model: ..., ...}: the `model:` entry
            n = lines[("models", key, "model")] - 1
            key, value = "model", value.get("model")
        # `key: value` in block style or inside a {flow: mapping} on the same line
        pat = rf"""(\b{re.escape(str(key))}\s*:\s*)(["']?){re.escape(str(value))}\2"""
        new, hits = re.subn(pat, lambda m: m.group(1) + spec, out[n], count=1)
        if not hits:
            raise ConfigError(f"cannot rewrite the model line {out[n]!r}",
                              where=f"{plan.workflow}:{n + 1}")
        out[n] = new
    head = (f"# Generated by `slmflow deploy` from {plan.workflow.name}: every model is served "
            f"at {url}\n# (one base, one LoRA adapter per agent, addressed by name).\n")
    return head + "\n".join(out) + "\n"


def vllm_files(plan: DeployPlan, *, base_model: str, host: str = "0.0.0.0", port: int = 8000,
               extra: str = "") -> dict[str, str]:
    """vllm.sh (the launch command) and the workflow overlay."""
    served_base = plan.bases[0] if plan.bases else "base"
    for a in plan.adapters:
        if not (a.peft_dir / "adapter_config.json").is_file():
            raise ConfigError(f"adapter {a.adapter} has no PEFT folder ({a.peft_dir}): vLLM loads "
                              "PEFT adapters (ship adapter/ beside adapter.gguf, or deploy on "
                              "llama.cpp)", where=str(plan.workflow))
    mods = " \\\n  ".join(
        "--lora-modules " + shlex.quote(json.dumps({"name": a.served_name,
                                                    "path": str(a.peft_dir),
                                                    "base_model_name": served_base}))
        for a in plan.adapters)
    script = (
        "#!/bin/sh\n# Generated by `slmflow deploy vllm`: one base model, one LoRA per agent.\n"
        "# Requests address an adapter by its name in the `model` field.\n"
        "# VLLM_ALLOW_RUNTIME_LORA_UPDATING=1 also lets you add a new version without a restart:\n"
        "#   curl -X POST http://HOST:PORT/v1/load_lora_adapter "
        "-d '{\"lora_name\": \"NAME\", \"lora_path\": \"PATH\"}'\n"
        f"exec vllm serve {shlex.quote(base_model)} \\\n"
        f"  --served-model-name {shlex.quote(served_base)} \\\n"
        f"  --host {host} --port {port} \\\n"
        f"  --enable-lora --max-loras {max(1, len(plan.adapters))} "
        f"--max-lora-rank {plan.max_rank}"
        + (" \\\n  " + mods if mods else "") + (f" \\\n  {extra}" if extra else "") + "\n")
    url = f"http://{'127.0.0.1' if host == '0.0.0.0' else host}:{port}/v1"
    return {"vllm.sh": script, _overlay_name(plan, "vllm"): _overlay(plan, url)}


def llamacpp_files(plan: DeployPlan, *, host: str = "127.0.0.1", port: int = 8000,
                   n_ctx: int = 2048) -> dict[str, str]:
    """A `python -m llama_cpp.server --config_file` config (one alias per adapter) and the
    workflow overlay."""
    from ..models.catalog import resolve

    base = resolve(plan.bases[0]) if plan.bases else None
    gguf = getattr(base, "path", None)
    if gguf is None:
        raise ConfigError(f"{plan.bases[0] if plan.bases else '?'} is not a GGUF model: llama.cpp "
                          "serves GGUF bases (use `slmflow deploy vllm` for Hugging Face ones)",
                          where=str(plan.workflow))
    served_base = plan.bases[0]
    from ..models.llamacpp import default_threads, default_threads_batch

    common = {"n_ctx": n_ctx, "n_threads": default_threads(1),
              "n_threads_batch": default_threads_batch(1)}
    models = [{"model": str(gguf), "model_alias": served_base, **common}]
    for a in plan.adapters:
        if a.gguf is None:
            raise ConfigError(f"adapter {a.adapter} has no GGUF LoRA for llama.cpp",
                              where=str(a.peft_dir))
        models.append({"model": str(gguf), "model_alias": a.served_name, "lora_path": str(a.gguf),
                       **common})
    config = {"host": host, "port": port, "models": models}
    script = ("#!/bin/sh\n# Generated by `slmflow deploy llamacpp`: the base and one alias per "
              "adapter.\nexec python -m llama_cpp.server --config_file "
              "\"$(dirname \"$0\")/llamacpp.json\"\n")
    url = f"http://{host}:{port}/v1"
    return {"llamacpp.json": json.dumps(config, indent=2), "llamacpp.sh": script,
            _overlay_name(plan, "llamacpp"): _overlay(plan, url)}


def _overlay_name(plan: DeployPlan, engine: str) -> str:
    # beside the original: its `module:Type` references resolve from the workflow's folder
    return str(plan.workflow.resolve().with_name(f"{plan.workflow.stem}.{engine}.yaml"))


def write_deployment(files: dict[str, str], out: str | Path) -> list[Path]:
    """Write the files (relative names under ``out``; the overlay, an absolute path, beside its
    workflow)."""
    d = Path(out)
    d.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in files.items():
        p = Path(name) if Path(name).is_absolute() else d / name
        p.write_text(text)
        if name.endswith(".sh"):
            p.chmod(0o755)
        written.append(p)
    return written
