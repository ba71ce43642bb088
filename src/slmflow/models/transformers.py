"""Hugging Face transformers in-process: the path fine-tuning shares (PEFT LoRA adapters).

Why it exists beside llama.cpp: LoRA training needs the model in torch, and the adapter a run
produces must be servable as-is before it is converted to GGUF. This backend loads the same
SmolLM2 from its GGUF file (``gguf_file=``, dequantized to fp32), applies a PEFT adapter, and
constrains decoding with llguidance (a logits processor that masks every token that would leave
the JSON schema's language).

Loading a GGUF through transformers dequantizes every tensor (~15 s for 135M parameters here).
The dequantized base is therefore saved once as safetensors under ``$SLMFLOW_HOME/models`` and
later loads read that (under 0.5 s). transformers refuses ``save_pretrained`` on a GGUF-loaded
model until ``hf_quantizer`` and ``config.quantization_config`` are cleared: we clear them.

Confidence uses the raw logits (``output_logits=True``), i.e. before the constraint's mask, as
defined in `slmflow.types`.
"""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path
from typing import Any, Sequence

from ..errors import (BackendUnavailableError, ContextLengthError, GenerationError,
                      ModelLoadError, ModelNotFoundError, SchemaError)
from ..home import subdir
from ..structured import OutputSpec, attempt_budget, generate_validated
from ..types import (Message, MessageLike, ModelInfo, Response, Settings, ToolSpec, Usage,
                     confidence_from_logprobs)
from .base import Model, call_parts, import_backend, sent_messages


def _imports():
    torch, transformers = import_backend("transformers/torch", "transformers", "torch",
                                         "transformers")
    return torch, transformers


def dequantized_base(gguf_path: Path, name: str) -> Path:
    """A safetensors folder of the GGUF's weights, made once (the slow dequantization)."""
    torch, transformers = _imports()
    folder = subdir("models") / f"{gguf_path.stem}-fp32"
    if (folder / "model.safetensors").is_file() and (folder / ".complete").is_file():
        return folder
    try:
        model = transformers.AutoModelForCausalLM.from_pretrained(
            str(gguf_path.parent), gguf_file=gguf_path.name, dtype=torch.float32)
        tok = transformers.AutoTokenizer.from_pretrained(str(gguf_path.parent),
                                                         gguf_file=gguf_path.name)
    except Exception as e:
        raise ModelLoadError(f"transformers could not load {gguf_path.name}: {e}",
                             where=name) from None
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    tmp = folder.with_name(folder.name + ".partial")
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    import shutil

    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)
    (folder / ".complete").write_text(str(gguf_path))
    return folder


class _SchemaMask:
    """A transformers logits processor: llguidance keeps the output inside the schema."""

    def __init__(self, lltok: Any, grammar: str, prompt_len: int) -> None:
        import llguidance
        import llguidance.torch as lltorch

        self.matcher = llguidance.LLMatcher(lltok, grammar)
        if self.matcher.is_error():
            raise SchemaError(f"llguidance rejected the schema: {self.matcher.get_error()}",
                              where="transformers")
        self.bitmask = lltorch.allocate_token_bitmask(1, lltok.vocab_size)
        self.prompt_len = prompt_len
        self._lltorch = lltorch

    def __call__(self, input_ids, scores):
        if input_ids.shape[1] > self.prompt_len:
            self.matcher.consume_token(int(input_ids[0, -1]))
        self._lltorch.fill_next_token_bitmask(self.matcher, self.bitmask, 0)
        self._lltorch.apply_token_bitmask_inplace(scores, self.bitmask.to(scores.device))
        return scores


class TransformersModel(Model):
    """A causal LM on transformers (CPU or GPU), optionally from a GGUF file, optionally with a
    PEFT LoRA adapter (``adapter_path``)."""

    def __init__(self, path: str | Path, *, name: str | None = None, gguf: bool | None = None,
                 adapter_path: str | Path | None = None, adapter: str | None = None,
                 dtype: str = "float32", device: str | None = None, n_ctx: int = 2048) -> None:
        self.path = Path(path)
        if not self.path.exists():
            raise ModelNotFoundError(f"model path not found: {self.path}", where=name or str(path))
        self.gguf = self.path.suffix == ".gguf" if gguf is None else gguf
        self.adapter_path = Path(adapter_path) if adapter_path else None
        if self.adapter_path is not None and not self.adapter_path.exists():
            raise ModelNotFoundError(f"adapter not found: {self.adapter_path}",
                                     where=name or str(path))
        self.dtype = dtype
        self.device = device
        self.n_ctx = n_ctx
        adapter = adapter or (self.adapter_path.name if self.adapter_path else None)
        self.info = ModelInfo("transformers", name or self.path.stem, adapter)
        self.model: Any = None
        self.tokenizer: Any = None
        self._lltok: Any = None
        self._lock = threading.Lock()
        self._load_lock = threading.Lock()

    def load(self) -> "TransformersModel":
        with self._load_lock:
            if self.model is not None:
                return self
            torch, transformers = _imports()
            folder = dequantized_base(self.path, self.info.name) if self.gguf else self.path
            device = self.device or ("cuda" if torch.cuda.is_available() else "cpu")
            try:
                model = transformers.AutoModelForCausalLM.from_pretrained(
                    str(folder), dtype=getattr(torch, self.dtype))
                tok = transformers.AutoTokenizer.from_pretrained(str(folder))
            except Exception as e:
                raise ModelLoadError(f"transformers could not load {folder}: {e}",
                                     where=self.info.identity) from None
            if self.adapter_path is not None:
                from peft import PeftModel

                try:
                    model = PeftModel.from_pretrained(model, str(self.adapter_path))
                except Exception as e:
                    raise ModelLoadError(f"cannot apply adapter {self.adapter_path}: {e}",
                                         where=self.info.identity) from None
            model.to(device).eval()
            self.device = device
            self.tokenizer = tok
            self.model = model
        return self

    def prompt_text(self, messages: Sequence[Message]) -> str:
        self.load()
        if self.tokenizer.chat_template:
            return self.tokenizer.apply_chat_template(
                [m.to_openai() for m in messages], add_generation_prompt=True, tokenize=False)
        return "\n\n".join(m.content for m in messages)

    def _grammar(self, spec: OutputSpec, constraint: str | None = None) -> tuple[Any, str]:
        try:
            import llguidance
            import llguidance.hf
        except ImportError as e:
            raise BackendUnavailableError(f"llguidance is not installed ({e})",
                                          where="transformers") from None
        if self._lltok is None:
            self._lltok = llguidance.hf.from_tokenizer(self.tokenizer)
        grammar = llguidance.LLMatcher.grammar_from_json_schema(
            constraint or spec.schema_text, defaults={"whitespace_flexible": False})
        return self._lltok, grammar

    def _run(self, prompt: str, spec: OutputSpec | None, settings: Settings,
             max_tokens: int) -> Response:
        torch, _ = _imports()
        t0 = time.perf_counter()
        enc = self.tokenizer(prompt, return_tensors="pt", add_special_tokens=False).to(self.device)
        n_in = int(enc["input_ids"].shape[1])
        if n_in + 1 > self.n_ctx:
            raise ContextLengthError(f"prompt is {n_in} tokens; the context window is {self.n_ctx}",
                                     where=self.info.identity, prompt_tokens=n_in, n_ctx=self.n_ctx)
        processors = []
        if spec is not None:
            lltok, grammar = self._grammar(spec, settings.constraint)
            processors.append(_SchemaMask(lltok, grammar, n_in))
        kwargs: dict[str, Any] = dict(
            max_new_tokens=min(max_tokens, self.n_ctx - n_in), return_dict_in_generate=True,
            output_logits=True, pad_token_id=self.tokenizer.pad_token_id or
            self.tokenizer.eos_token_id)
        if settings.temperature > 0:
            if settings.seed is not None:
                torch.manual_seed(settings.seed)
            kwargs.update(do_sample=True, temperature=settings.temperature, top_p=settings.top_p)
        else:
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        if processors:
            from transformers import LogitsProcessorList

            kwargs["logits_processor"] = LogitsProcessorList(processors)
        try:
            with self._lock, torch.inference_mode():
                out = self.model.generate(**enc, **kwargs)
        except Exception as e:
            raise GenerationError(f"transformers failed while generating: {e}",
                                  where=self.info.identity) from None
        new = out.sequences[0, n_in:].tolist()
        eos = set(self.tokenizer.all_special_ids) & {self.tokenizer.eos_token_id}
        logprobs = []
        finish = "length"
        kept = []
        for i, tok in enumerate(new):
            if tok in eos:
                finish = "stop"
                break
            row = out.logits[i][0].float()
            logprobs.append(float(row[tok] - torch.logsumexp(row, dim=-1)))
            kept.append(tok)
        text = self.tokenizer.decode(kept, skip_special_tokens=True)
        for s in settings.stop:
            if s in text:
                text, finish = text[:text.index(s)], "stop"
        return Response(text=text, model=self.info, usage=Usage(n_in, len(kept)),
                        latency_s=time.perf_counter() - t0, finish_reason=finish,
                        confidence=confidence_from_logprobs(logprobs),
                        token_logprobs=tuple(logprobs))

    async def generate(self, messages: Sequence[MessageLike] | str, *, schema: Any = None,
                       tools: Sequence[ToolSpec] | None = None,
                       settings: Settings | None = None) -> Response:
        settings, spec, msgs = call_parts(messages, schema, tools, settings)
        if self.model is None:
            await asyncio.to_thread(self.load)

        async def attempt(s: OutputSpec | None, repair: bool) -> Response:
            prompt = self.prompt_text(sent_messages(msgs, s, settings))
            max_tokens = attempt_budget(s, settings.max_tokens, repair)
            return await asyncio.to_thread(self._run, prompt, s, settings, max_tokens)

        return await generate_validated(attempt, spec, where=self.info.identity)

    async def aclose(self) -> None:
        self.model = None
        self.tokenizer = None
