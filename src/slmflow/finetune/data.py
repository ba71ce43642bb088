"""Fine-tuning data: an agent's own (input, target) pairs, made into masked training sequences.

Why the agent formats its own examples: a LoRA adapter only helps if it is trained on exactly the
prompt the agent sends at inference (same instructions, same rendering of the input, same chat
template) and on exactly the text the decoder is then constrained to emit (compact JSON for a
structured output). So formatting goes through a `format_fn(input) -> messages` the agent supplies
and the model's own chat template; the loss is masked to the completion only.

Hygiene built in: exact-duplicate removal, a seeded train/validation split, a leakage check
against the agent's eval set (an example whose input appears in the eval set is an error, not a
warning: it would inflate the gate that decides promotion), and a content hash recorded on the
training card so an adapter's lineage names its data.
"""

from __future__ import annotations

import csv
import hashlib
import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from ..errors import ConfigError
from ..types import Message


@dataclass(frozen=True)
class Example:
    """One training pair. `source` records lineage (a file line, ``trace:<id>``, ``review:<id>``)."""

    input: Any
    target: Any
    source: str = ""
    reasoning: str | None = None

    def input_key(self) -> str:
        return _canonical(self.input)


def _canonical(value: Any) -> str:
    if hasattr(value, "model_dump"):
        value = value.model_dump(mode="json")
    if isinstance(value, str):
        return " ".join(value.lower().split())
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def target_text(example: Example) -> str:
    """The completion the model learns: compact JSON for structured targets (what the schema
    constraint lets the decoder emit), the text itself for free-text targets. With a reasoning
    field, that field comes first so the model reasons before it answers."""
    t = example.target
    if hasattr(t, "model_dump"):
        t = t.model_dump(mode="json")
    if isinstance(t, str) and example.reasoning is None:
        return t
    if isinstance(t, str):
        t = {"answer": t}
    if example.reasoning is not None:
        t = {"reasoning": example.reasoning, **t}
    return json.dumps(t, separators=(",", ":"), ensure_ascii=False)


def load_examples(path: str | Path, *, input_field: str = "input",
                  target_field: str = "target", target_key: str | None = None) -> list[Example]:
    """Read JSONL or CSV. Errors name the file, the line and the missing field.

    target_key: wrap a scalar target into ``{target_key: value}`` (a CSV label column becomes the
    router's ``{"intent": label}``).
    """
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"dataset not found: {p}", where=str(p))
    rows: list[tuple[int, dict[str, Any]]] = []
    if p.suffix in (".jsonl", ".json"):
        for i, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise ConfigError(f"line {i} is not JSON: {e.msg}", where=f"{p}:{i}") from None
            if not isinstance(obj, dict):
                raise ConfigError(f"line {i} is not a JSON object", where=f"{p}:{i}")
            rows.append((i, obj))
    elif p.suffix == ".csv":
        with open(p, newline="", encoding="utf-8") as f:
            for i, obj in enumerate(csv.DictReader(f), 2):
                rows.append((i, obj))
    else:
        raise ConfigError(f"unsupported dataset format {p.suffix!r} (use .jsonl or .csv)",
                          where=str(p))
    out = []
    for i, obj in rows:
        for fld in (input_field, target_field):
            if obj.get(fld) in (None, ""):
                raise ConfigError(f"line {i} has no {fld!r} field", where=f"{p}:{i}", field=fld)
        target = obj[target_field]
        if target_key is not None:
            target = {target_key: target}
        out.append(Example(obj[input_field], target, source=f"{p.name}:{i}",
                           reasoning=obj.get("reasoning")))
    if not out:
        raise ConfigError("dataset is empty", where=str(p))
    return out


def validate_targets(examples: Sequence[Example], output_type: Any, where: str) -> None:
    """Every structured target must fit the agent's output type (labels it cannot emit are
    errors: the constrained decoder could never produce them)."""
    if output_type in (None, str):
        return
    from pydantic import ValidationError

    bad = []
    for ex in examples:
        try:
            output_type.model_validate(ex.target)
        except ValidationError as e:
            bad.append(f"{ex.source or ex.input!r}: {e.errors()[0]['msg']}")
    if bad:
        raise ConfigError(f"{len(bad)} targets do not fit {output_type.__name__}: "
                          + "; ".join(bad[:5]), where=where, bad=bad)


def dedupe(examples: Iterable[Example]) -> list[Example]:
    seen: set[tuple[str, str]] = set()
    out = []
    for ex in examples:
        key = (ex.input_key(), target_text(ex))
        if key not in seen:
            seen.add(key)
            out.append(ex)
    return out


def split(examples: Sequence[Example], val_fraction: float = 0.1,
          seed: int = 0) -> tuple[list[Example], list[Example]]:
    items = list(examples)
    random.Random(seed).shuffle(items)
    n_val = int(round(len(items) * val_fraction)) if len(items) > 10 else 0
    return items[n_val:], items[:n_val]


def check_leakage(train: Sequence[Example], eval_inputs: Iterable[Any], where: str) -> None:
    """Raise if a training input also appears in the agent's eval set."""
    held = {_canonical(x) for x in eval_inputs}
    leaked = [ex for ex in train if ex.input_key() in held]
    if leaked:
        raise ConfigError(f"{len(leaked)} training examples also appear in the eval set "
                          f"(e.g. {leaked[0].input!r}); remove them or the gate is inflated",
                          where=where, leaked=len(leaked))


def data_hash(examples: Sequence[Example]) -> str:
    h = hashlib.sha256()
    for ex in examples:
        h.update(ex.input_key().encode())
        h.update(b"\x1f")
        h.update(target_text(ex).encode())
        h.update(b"\x1e")
    return h.hexdigest()


@dataclass
class Encoded:
    input_ids: list[int]
    labels: list[int]
    source: str = ""


@dataclass
class ChatEncoder:
    """Token ids with the loss masked to the completion (prompt tokens get label -100)."""

    tokenizer: Any
    format_fn: Callable[[Any], list[Message]]
    max_len: int = 256
    _end: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        # The assistant turn ends as the chat template ends it (SmolLM2: "<|im_end|>").
        probe = self.tokenizer.apply_chat_template(
            [{"role": "user", "content": "x"}, {"role": "assistant", "content": "Y"}],
            tokenize=False)
        tail = probe[probe.rindex("Y") + 1:]
        end = tail.strip("\n") or (self.tokenizer.eos_token or "")
        self._end = self.tokenizer(end, add_special_tokens=False)["input_ids"]

    def prompt_ids(self, input: Any) -> list[int]:
        msgs = [m.to_openai() for m in self.format_fn(input)]
        text = self.tokenizer.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def encode(self, ex: Example) -> Encoded | None:
        """The example's ids and labels; None when prompt + completion exceed ``max_len`` (a
        truncated completion would teach the model to stop mid-answer)."""
        prompt = self.prompt_ids(ex.input)
        completion = self.tokenizer(target_text(ex), add_special_tokens=False)["input_ids"]
        completion = completion + self._end
        if len(prompt) + len(completion) > self.max_len:
            return None
        return Encoded(prompt + completion, [-100] * len(prompt) + completion, ex.source)
