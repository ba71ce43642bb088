"""The adapter registry: versioned LoRA adapters per agent, with lineage and a gated promotion.

Per agent: versions ``v1``, ``v2``, ... each with ``adapter/`` (PEFT), ``adapter.gguf``
(llama.cpp) and a card (lineage, metrics, eval scores); a *promoted* pointer (what agents load);
a history of every promotion / rejection / rollback with the compared scores. Where they live is
the store's business (`slmflow.finetune.registry_store`): files under ``$SLMFLOW_HOME/adapters``
by default, PostgreSQL (``SLMFLOW_ADAPTERS_URL``) when trainers and servers run on several
machines.

Why a gate in the registry and not in the trainer: promotion is the one decision that changes
what production serves, so it is enforced in one place: `promote` refuses a version whose eval
scores are below the currently promoted version's on any shared metric (beyond ``tolerance``), and
records the comparison either way. `rollback` restores the previously promoted version. Both hold
the store's per-agent lock (a file lock, or a PostgreSQL advisory lock), so two processes never
interleave one decision.

Why agents pick up a promotion without restart: `PromotedAdapterModel` is a `Model` wrapper that
asks the store for the pointer's stamp (a stat call on ``promoted.json``; a one-row query on
PostgreSQL, at most once a second; at once after a promotion made by the same process) before each
generation and swaps the adapter-carrying model when it changed. Registration stages the files in
a temporary folder and adds them in one step (a rename; one transaction), so a crash never leaves
a half-written version visible.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Sequence

from ..errors import ConfigError, SlmflowError
from ..models.base import Model, SettingsOverride
from ..types import MessageLike, ModelInfo, Response, Settings, ToolSpec
from .registry_store import (CHECKSUMS, RegistryStore, check_agent, check_version,
                             open_registry_store)

_log = logging.getLogger("slmflow.adapters")


class PromotionRejected(SlmflowError):
    """The eval gate refused a promotion: the candidate scores below the promoted version."""


# Promotions written by this process, per (store location, agent): a serving agent in the same
# process sees them at once instead of after the store's poll interval.
_LOCAL_WRITES: dict[tuple[str, str], int] = {}


def _bump(location: str, agent: str) -> None:
    key = (location, agent)
    _LOCAL_WRITES[key] = _LOCAL_WRITES.get(key, 0) + 1


class AdapterRegistry:
    """Versions, cards, the promoted pointer and the history of each agent's adapters.

    location: a folder (default ``$SLMFLOW_HOME/adapters``), ``postgresql://...``, a
    `RegistryStore`, or None for ``$SLMFLOW_ADAPTERS_URL`` / the default folder."""

    def __init__(self, root: str | Path | RegistryStore | None = None) -> None:
        self.store = root if isinstance(root, RegistryStore) else open_registry_store(root)

    @property
    def root(self) -> Path | None:
        """The folder of a file-backed registry (None on PostgreSQL)."""
        return getattr(self.store, "root", None)

    def __repr__(self) -> str:
        return f"AdapterRegistry({self.store.location!r})"

    # -- reading ---------------------------------------------------------------------------
    def _check(self, agent: str, version: str | None = None) -> str:
        """Names are checked here (the Python API and the CLI) and again by the store."""
        if version is not None:
            check_version(version, where=f"adapters/{agent}")
        return check_agent(agent)

    def versions(self, agent: str) -> list[str]:
        return self.store.versions(self._check(agent))

    def agents(self) -> list[str]:
        return self.store.agents()

    def card(self, agent: str, version: str) -> dict[str, Any]:
        card = self.store.card(self._check(agent, version), version)
        if card is None:
            raise ConfigError(f"no adapter {agent}@{version}; known: {self.versions(agent)}",
                              where=f"adapters ({self.store.location})")
        return card

    def update_card(self, agent: str, version: str, card: dict[str, Any]) -> None:
        """Replace a version's card (lineage and scores; the adapter's files never change)."""
        if not isinstance(card, dict):
            raise ConfigError(f"a card is a dict, not {type(card).__name__}",
                              where=f"adapters/{agent}@{version}")
        self.card(agent, version)
        self.store.write_card(agent, version, card)

    def path(self, agent: str, version: str) -> Path:
        """A local folder with the version's files (``adapter/``, ``adapter.gguf``,
        ``card.json``); copied from the database once per machine when the registry is there."""
        self.card(agent, version)
        return self.store.local_dir(agent, version)

    def promoted(self, agent: str) -> str | None:
        state = self.store.promoted(self._check(agent))
        return state["version"] if state else None

    def history(self, agent: str) -> list[dict[str, Any]]:
        return self.store.history(self._check(agent))

    # -- writing ---------------------------------------------------------------------------
    def register(self, agent: str, adapter_dir: str | Path, card: dict[str, Any], *,
                 base_gguf: str | Path | None = None, parent: str | None = None,
                 trace_ids: Sequence[str] = ()) -> str:
        """Copy a trained PEFT adapter in as the next version; export its GGUF LoRA when the base
        is a llama.cpp GGUF. Returns the version (``v1``, ``v2``, ...)."""
        src = Path(adapter_dir)
        if not (src / "adapter_config.json").is_file():
            raise ConfigError("not a PEFT adapter folder", where=str(src))
        self._check(agent)
        with tempfile.TemporaryDirectory(prefix=f"slmflow-{agent}-") as tmp:
            staged = Path(tmp) / "version"
            shutil.copytree(src, staged / "adapter")
            if base_gguf is not None:
                from .gguf_export import export_lora_gguf

                export_lora_gguf(src, base_gguf, staged / "adapter.gguf")

            def make_card(version: str) -> dict[str, Any]:
                lineage = {"agent": agent, "version": version, "parent": parent,
                           "trace_ids": list(trace_ids), "registered_at": time.time()}
                return {**card, "lineage": lineage}

            return self.store.add_version(agent, staged, make_card)

    def _log(self, agent: str, entry: dict[str, Any]) -> None:
        self.store.append_history(agent, {**entry, "at": time.time()})

    def record_scores(self, agent: str, version: str, scores: dict[str, float]) -> None:
        card = self.card(agent, version)
        card["eval_scores"] = {**card.get("eval_scores", {}), **scores}
        self.store.write_card(agent, version, card)

    def promote(self, agent: str, version: str, scores: dict[str, float] | None = None, *,
                tolerance: float = 0.0, force: bool = False,
                baseline: dict[str, float] | None = None,
                extra: dict[str, Any] | None = None) -> dict[str, Any]:
        """Promote `version` if its eval scores are at least the promoted version's on every
        metric both have (higher is better). The comparison is stored either way.

        baseline: the promoted version's scores measured now on the same cases as ``scores``
        (the improvement loop does this: its eval set grows with every reviewed batch, so the
        scores stored on the old card are not comparable). extra: more context for the history
        (which reviews and calls produced the candidate). One decision at a time per agent, also
        across processes (the store's lock)."""
        self._check(agent, version)
        with self.store.lock(agent):
            return self._promote(agent, version, scores, tolerance=tolerance, force=force,
                                 baseline=baseline, extra=extra)

    def _promote(self, agent: str, version: str, scores: dict[str, float] | None, *,
                 tolerance: float, force: bool, baseline: dict[str, float] | None,
                 extra: dict[str, Any] | None) -> dict[str, Any]:
        if scores:
            self.record_scores(agent, version, scores)
        cand = dict(scores) if (scores and baseline is not None) else \
            self.card(agent, version).get("eval_scores", {})
        current = self.promoted(agent)
        base_scores = (baseline if baseline is not None else
                       self.card(agent, current).get("eval_scores", {}) if current else {})
        shared = sorted(set(cand) & set(base_scores))
        if current and not cand and not force:
            raise PromotionRejected(f"{agent}@{version} has no eval scores; run its eval suite",
                                    where=f"adapters/{agent}")
        drops = {k: (base_scores[k], cand[k]) for k in shared
                 if cand[k] < base_scores[k] - tolerance}
        decision = {"agent": agent, "candidate": version, "current": current,
                    "candidate_scores": cand, "current_scores": base_scores,
                    "compared": shared, "drops": drops, "tolerance": tolerance,
                    "same_cases": baseline is not None, **(extra or {})}
        if current and shared == [] and not force:
            decision["action"] = "rejected"
            self._log(agent, decision)
            raise PromotionRejected(
                f"{agent}@{version} shares no eval metric with {current}: nothing to compare",
                where=f"adapters/{agent}")
        if drops and not force:
            decision["action"] = "rejected"
            self._log(agent, decision)
            worst = ", ".join(f"{k}: {a:.4f} -> {b:.4f}" for k, (a, b) in drops.items())
            raise PromotionRejected(f"{agent}@{version} scores below {current}: {worst}",
                                    where=f"adapters/{agent}", decision=decision)
        decision["action"] = "promoted" + (" (forced)" if force and drops else "")
        self.store.write_promoted(agent, {"version": version, "previous": current,
                                          "at": time.time()})
        _bump(self.store.location, agent)
        self._log(agent, decision)
        return decision

    def rollback(self, agent: str) -> str:
        """Restore the version promoted before the current one."""
        self._check(agent)
        with self.store.lock(agent):
            state = self.store.promoted(agent)
            if not state:
                raise ConfigError(f"{agent} has no promoted adapter", where="adapters")
            previous = state.get("previous")
            if not previous:
                raise ConfigError(f"{agent}@{state['version']} has no earlier promoted version",
                                  where="adapters")
            earlier = [h for h in self.history(agent)
                       if h.get("action", "").startswith("promoted")
                       and h["candidate"] == previous]
            before = earlier[-1]["current"] if earlier else None
            self.store.write_promoted(agent, {"version": previous, "previous": before,
                                              "at": time.time()})
            _bump(self.store.location, agent)
            self._log(agent, {"action": "rollback", "from": state["version"], "to": previous})
            return previous

    def copy_from(self, other: "AdapterRegistry", agents: Sequence[str] | None = None
                  ) -> dict[str, list[str]]:
        """Copy every version (files and cards, same version names), the promoted pointer and
        the history of ``other``'s agents into this registry, which must not have them yet
        (moving a file registry to PostgreSQL: `slmflow adapters copy`)."""
        out: dict[str, list[str]] = {}
        for agent in agents or other.agents():
            mine = self.versions(agent)
            if mine:
                raise ConfigError(f"{agent} already has versions {mine} in {self.store.location}; "
                                  "copy into an empty registry", where="adapters")
            copied = []
            for v in other.versions(agent):
                src = other.path(agent, v)
                with tempfile.TemporaryDirectory(prefix=f"slmflow-{agent}-") as tmp:
                    staged = Path(tmp) / "version"
                    shutil.copytree(src, staged,
                                    ignore=shutil.ignore_patterns("card.json", ".complete",
                                                                  CHECKSUMS))
                    card = other.card(agent, v)
                    got = self.store.add_version(agent, staged, lambda _v, c=card: c)
                if got != v:  # versions are numbered densely from v1, as in the source
                    raise ConfigError(f"{agent}: copied {v} landed as {got}", where="adapters")
                copied.append(v)
            for h in other.history(agent):
                self.store.append_history(agent, h)
            state = other.store.promoted(agent)
            if state:
                self.store.write_promoted(agent, state)
                _bump(self.store.location, agent)
            out[agent] = copied
        return out

    # -- serving ---------------------------------------------------------------------------
    def model_for(self, base: Model, agent: str, version: str) -> Model:
        """`base` with `agent@version`'s adapter: a GGUF LoRA on llama.cpp, PEFT on transformers."""
        d = self.path(agent, version)
        return _with_adapter(base, d / "adapter.gguf", d / "adapter", f"{agent}@{version}",
                             self.card(agent, version), where=str(d))

    def resolver(self):
        """The function agents use to turn (base model, adapter name) into a model.

        ``"router"`` follows the promoted version (hot-swapped on promotion); ``"router@v3"``
        pins a version; a path (``adapters/router``, ``/x/router.gguf``) loads an adapter that
        lives outside the registry (see `model_for_path`)."""
        def resolve(base: Model, adapter: str) -> Model:
            if is_adapter_path(adapter):
                return model_for_path(base, adapter)
            if "@" in adapter:
                agent, version = adapter.split("@", 1)
                return self.model_for(base, agent, version)
            return PromotedAdapterModel(self, base, adapter)
        return resolve


# ---- adapters outside the registry ---------------------------------------------------------------
#
# Why: an example or an application ships its adapters beside its workflow (the support example's
# router and extractor, trained by `slmflow train agent`), so they must load from a path without
# being registered on every machine first. A path is told apart from a registry name by a path
# separator or a ``.gguf`` suffix (registry names are ``[A-Za-z0-9_.-]+`` with an optional
# ``@version``). An adapter folder has the registry's version layout: ``adapter.gguf`` (llama.cpp),
# ``adapter/`` (PEFT, for transformers) and ``card.json`` (its lineage; ``schema_hint`` decides
# whether the schema text stays in the prompt). A bare ``.gguf`` file has no card: the schema
# text stays in.

def is_adapter_path(adapter: str) -> bool:
    return "/" in adapter or os.sep in adapter or adapter.endswith(".gguf") or \
        adapter.startswith(("~", "."))


def model_for_path(base: Model, adapter: str | Path) -> Model:
    """`base` with the adapter stored at `adapter` (a folder in the registry's version layout, or
    a GGUF LoRA file). The adapter's card must name the same base model."""
    p = Path(adapter).expanduser()
    if p.is_file() and p.suffix == ".gguf":
        gguf, peft, card = p, p.with_suffix(""), {}
        label = p.stem
    elif p.is_dir():
        if not (p / "card.json").is_file():
            raise ConfigError("an adapter folder needs card.json beside adapter.gguf / adapter/",
                              where=str(p))
        gguf, peft = p / "adapter.gguf", p / "adapter"
        try:
            card = json.loads((p / "card.json").read_text())
        except (ValueError, OSError) as e:
            raise ConfigError(f"{p / 'card.json'} is not readable JSON ({e})",
                              where=str(p / "card.json")) from None
        if not isinstance(card, dict):
            raise ConfigError(f"{p / 'card.json'} is not a JSON object", where=str(p))
        label = "/".join(p.resolve().parts[-2:])
    else:
        raise ConfigError(f"adapter not found: {p} (a folder with card.json and adapter.gguf, "
                          "or a .gguf LoRA file)", where=str(p))
    trained_on = card.get("base_model")
    if trained_on and trained_on != base.info.name:
        raise ConfigError(f"adapter {label} was trained on {trained_on}, not {base.info.name}; "
                          "run the base model without it (slmflow run --no-adapters)",
                          where=str(p))
    return _with_adapter(base, gguf, peft, label, card, where=str(p))


def _with_adapter(base: Model, gguf: Path, peft: Path, adapter_name: str, card: dict[str, Any],
                  *, where: str) -> Model:
    from ..models.llamacpp import LlamaCppModel
    from ..models.openai import OpenAIModel
    from ..models.transformers import TransformersModel

    model: Model
    if isinstance(base, OpenAIModel):
        # a server with many adapters on one base (vLLM multi-LoRA, llama.cpp's server with
        # aliases): the adapter is addressed by its served name (`slmflow deploy` registers it)
        model = OpenAIModel(served_adapter_name(adapter_name), base_url=base.base_url,
                            api_key=base.api_key, timeout_s=base.timeout_s,
                            max_retries=base.max_retries, schema_style=base.schema_style,
                            logprobs=base.logprobs, name=base.info.name, adapter=adapter_name,
                            provider=base.info.provider)
    elif isinstance(base, LlamaCppModel):
        if not gguf.is_file():
            raise ConfigError(f"{adapter_name} has no GGUF LoRA (registered without a GGUF "
                              "base)", where=where)
        model = LlamaCppModel(base.source_path, name=base.info.name, n_ctx=base.n_ctx,
                              n_threads=base.n_threads, n_threads_batch=base.n_threads_batch,
                              pool_size=base.pool_size, lora_path=gguf, adapter=adapter_name,
                              chat=base.chat, weights=base.weights or "as-shipped",
                              engine=base.engine, prefix_cache=base.prefix_cache)
    elif isinstance(base, TransformersModel):
        if not (peft / "adapter_config.json").is_file():
            raise ConfigError(f"{adapter_name} has no PEFT adapter folder", where=where)
        model = TransformersModel(base.path, name=base.info.name, gguf=base.gguf,
                                  adapter_path=peft, adapter=adapter_name,
                                  dtype=base.dtype, device=base.device, n_ctx=base.n_ctx)
    else:
        raise ConfigError(f"adapters load on llama.cpp or transformers models, not "
                          f"{type(base).__name__} (serve adapters on vLLM by name instead)",
                          where=adapter_name)
    if not card.get("schema_hint", True):
        # trained on the agent's bare prompt: the schema is known, only the constraint stays
        model = SettingsOverride(model, schema_hint=False)
    return model


def served_adapter_name(adapter_name: str) -> str:
    """The model name an adapter is served under on an OpenAI-compatible server:
    ``triage@v2`` → ``triage-v2``, ``adapters/router`` → ``adapters-router``."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", adapter_name).strip("-")


def base_model_resolver(base: Model, adapter: str) -> Model:
    """An adapter resolver that ignores every adapter: the zero-shot base models, for comparison
    (``slmflow run --no-adapters``; install with `slmflow.agents.set_adapter_resolver`)."""
    return base


class PromotedAdapterModel(Model):
    """Serves an agent's currently promoted adapter, following promotions without a restart."""

    def __init__(self, registry: AdapterRegistry, base: Model, agent: str) -> None:
        self.registry, self.base, self.agent = registry, base, agent
        self._stamp: Any = None
        self._checked = float("-inf")
        self._local = -1
        self._model: Model | None = None
        self._version: str | None = None
        self._lock = threading.Lock()
        if registry.promoted(agent) is None:
            raise ConfigError(f"agent {agent!r} has no promoted adapter; promote one or pin "
                              f"a version ({agent}@vN)", where="adapters")
        self._current()

    def _current(self) -> Model:
        now = time.monotonic()
        with self._lock:
            local = _LOCAL_WRITES.get((self.registry.store.location, self.agent), 0)
            if self._model is not None and local == self._local and \
                    now - self._checked < self.registry.store.poll_s:
                return self._model
            self._local = local
            try:
                stamp = self.registry.store.stamp(self.agent)
            except SlmflowError as e:
                if self._model is None:
                    raise
                # the registry's database is away (a restart, a failover): keep serving the
                # loaded version and ask again after the poll interval
                self._checked = now
                _log.warning("adapter registry unreachable, %s keeps serving %s: %s",
                             self.agent, self._version, e)
                return self._model
            self._checked = now
            if self._model is None or stamp != self._stamp:
                version = self.registry.promoted(self.agent)
                if version is None:
                    raise ConfigError(f"agent {self.agent!r} has no promoted adapter",
                                      where="adapters")
                if version != self._version:
                    self._model = self.registry.model_for(self.base, self.agent, version)
                    self._version = version
                self._stamp = stamp
            return self._model

    @property
    def info(self) -> ModelInfo:  # type: ignore[override]
        return self._current().info

    @property
    def version(self) -> str | None:
        self._current()
        return self._version

    async def generate(self, messages: Sequence[MessageLike] | str, *, schema: Any = None,
                       tools: Sequence[ToolSpec] | None = None,
                       settings: Settings | None = None) -> Response:
        return await self._current().generate(messages, schema=schema, tools=tools,
                                              settings=settings)

    async def _stream(self, messages: Sequence[MessageLike] | str, *, schema: Any = None,
                      tools: Sequence[ToolSpec] | None = None,
                      settings: Settings | None = None) -> Any:
        from ..models.base import pass_through

        async for item in pass_through(self._current().stream(messages, schema=schema,
                                                              tools=tools, settings=settings)):
            yield item
