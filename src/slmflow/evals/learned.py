"""Learned judge rubrics: versioned files a judge evaluator loads when one is promoted.

Why files and not only code: a judge's rubric is configuration that the improvement loop changes
(`slmflow loop retrain --judge NAME`, `slmflow.loop.judges`), reviewers' decisions are its data,
and whoever runs the judge (`slmflow loop evaluate`, an eval suite, a gate) must get the promoted
version without a code change, and be able to say which version judged. So each learned version
is a folder with one JSON file, and a pointer names the one that serves:

    $SLMFLOW_HOME/judges/<name>/v1/rubric.json     few-shot examples, or a LoRA adapter name
    $SLMFLOW_HOME/judges/<name>/v2/rubric.json
    $SLMFLOW_HOME/judges/<name>/promoted.json      {"version": "v2", "previous": "v1", "at": ...}
    $SLMFLOW_HOME/judges/<name>/history.jsonl      every retrain's decision, kappas included

A ``rubric.json`` holds the judge's labels (checked against the evaluator's: a rubric for other
labels is an error, not a silent mismatch), ``few_shot`` (``{"user": text, "verdict": {...}}``
pairs shown before each case), ``adapter`` (``judge.<name>@vN`` in the adapter registry, or
null), the held-out ``scores`` that got it promoted and its ``lineage`` (parent version, review
ids, call ids, trace ids, reviewers). A version is written whole (a temporary folder renamed into
place), so a reader never sees half a rubric; a candidate that lost its gate stays on disk,
unpromoted, for the record.

The built-in judge evaluators (``judge``, ``faithfulness``) call `apply_learned` when built:
``learned=True`` (default) loads the promoted version if there is one, ``learned="v2"`` pins one,
``learned=False`` ignores them (the loop does this to compare versions).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from ..errors import ConfigError

__all__ = ["judges_root", "judge_dir", "versions", "load_rubric", "write_rubric",
           "promoted_version", "promote", "history", "apply_learned", "apply_rubric",
           "adapter_agent"]

_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,120}")
_VERSION = re.compile(r"v[1-9][0-9]*")


def judges_root(root: str | Path | None = None) -> Path:
    """``$SLMFLOW_HOME/judges`` (not created here: loading must not make folders)."""
    if root is not None:
        return Path(root)
    return Path(os.environ.get("SLMFLOW_HOME") or ".slmflow").expanduser().resolve() / "judges"


def judge_dir(name: str, root: str | Path | None = None) -> Path:
    if not isinstance(name, str) or not _NAME.fullmatch(name) or ".." in name:
        raise ConfigError(f"invalid judge name {name!r}: 1-121 characters of A-Z a-z 0-9 . _ -, "
                          "not starting with '.' or '-'", where="judges")
    return judges_root(root) / name


def adapter_agent(name: str) -> str:
    """The adapter-registry name of a judge's LoRA versions."""
    return f"judge.{name}"


def versions(name: str, root: str | Path | None = None) -> list[str]:
    d = judge_dir(name, root)
    if not d.is_dir():
        return []
    vs = [p.name for p in d.iterdir() if _VERSION.fullmatch(p.name) and (p / "rubric.json")
          .is_file()]
    return sorted(vs, key=lambda v: int(v[1:]))


def promoted_version(name: str, root: str | Path | None = None) -> str | None:
    p = judge_dir(name, root) / "promoted.json"
    if not p.is_file():
        return None
    try:
        return json.loads(p.read_text())["version"]
    except (ValueError, KeyError, TypeError):
        raise ConfigError("the promoted pointer is not JSON with a 'version'; fix or remove it",
                          where=str(p)) from None


def load_rubric(name: str, version: str | None = None, root: str | Path | None = None
                ) -> dict[str, Any] | None:
    """A version's rubric (default: the promoted one); None when nothing is promoted."""
    version = version or promoted_version(name, root)
    if version is None:
        return None
    if not _VERSION.fullmatch(str(version)):
        raise ConfigError(f"invalid rubric version {version!r}: versions are v1, v2, ...",
                          where=f"judges/{name}")
    p = judge_dir(name, root) / version / "rubric.json"
    if not p.is_file():
        raise ConfigError(f"no rubric {name}@{version}; known: {versions(name, root)}",
                          where=str(p.parent.parent))
    try:
        d = json.loads(p.read_text())
    except ValueError as e:
        raise ConfigError(f"the rubric is not JSON: {e}", where=str(p)) from None
    if not isinstance(d, dict) or not isinstance(d.get("few_shot", []), list):
        raise ConfigError("a rubric is a JSON object with a 'few_shot' list", where=str(p))
    return d


def write_rubric(name: str, data: dict[str, Any], root: str | Path | None = None) -> str:
    """Add ``data`` as the next version (written whole, then renamed into place)."""
    d = judge_dir(name, root)
    d.mkdir(parents=True, exist_ok=True)
    for _ in range(100):
        vs = versions(name, root)
        version = f"v{int(vs[-1][1:]) + 1 if vs else 1}"
        tmp = Path(tempfile.mkdtemp(prefix=".rubric-", dir=d))
        (tmp / "rubric.json").write_text(json.dumps({**data, "judge": name, "version": version},
                                                    indent=2, default=str) + "\n")
        try:
            os.rename(tmp, d / version)  # fails if another writer took this number
            return version
        except OSError:
            shutil.rmtree(tmp, ignore_errors=True)
    raise ConfigError("could not allocate a rubric version", where=str(d))


def promote(name: str, version: str, decision: dict[str, Any],
            root: str | Path | None = None) -> None:
    d = judge_dir(name, root)
    load_rubric(name, version, root)  # exists and parses
    state = {"version": version, "previous": promoted_version(name, root), "at": time.time()}
    tmp = d / f".promoted-{os.getpid()}.json"
    tmp.write_text(json.dumps(state) + "\n")
    os.replace(tmp, d / "promoted.json")
    log_decision(name, {**decision, "action": "promoted", "version": version}, root)


def log_decision(name: str, entry: dict[str, Any], root: str | Path | None = None) -> None:
    d = judge_dir(name, root)
    d.mkdir(parents=True, exist_ok=True)
    with open(d / "history.jsonl", "a", encoding="utf-8") as f:
        f.write(json.dumps({**entry, "at": time.time()}, default=str) + "\n")


def history(name: str, root: str | Path | None = None) -> list[dict[str, Any]]:
    p = judge_dir(name, root) / "history.jsonl"
    if not p.is_file():
        return []
    return [json.loads(x) for x in p.read_text().splitlines() if x.strip()]


def apply_rubric(judge: Any, rubric: dict[str, Any], *, where: str) -> Any:
    """Set an `LLMJudge`'s few-shot examples and adapter from a rubric (labels must match)."""
    labels = rubric.get("labels")
    if labels is not None and list(labels) != list(judge.labels):
        raise ConfigError(f"the learned rubric is for labels {labels}, the judge has "
                          f"{list(judge.labels)}", where=where)
    shots = []
    for i, ex in enumerate(rubric.get("few_shot") or []):
        if not (isinstance(ex, dict) and isinstance(ex.get("user"), str)
                and isinstance(ex.get("verdict"), dict)):
            raise ConfigError(f"few_shot[{i}] needs 'user' (text) and 'verdict' (object)",
                              where=where)
        if ex["verdict"].get("verdict") not in judge.labels:
            raise ConfigError(f"few_shot[{i}]: verdict {ex['verdict'].get('verdict')!r} is not "
                              f"one of {list(judge.labels)}", where=where)
        shots.append({"user": ex["user"], "verdict": ex["verdict"]})
    judge.few_shot = shots
    judge.adapter = rubric.get("adapter") or None
    return judge


def apply_learned(judge: Any, name: str, learned: bool | str = True,
                  root: str | Path | None = None) -> str | None:
    """Load the judge's promoted (or pinned) learned rubric into it; returns the version used."""
    if learned is False or learned is None:
        return None
    if learned is True and not (isinstance(name, str) and _NAME.fullmatch(name)):
        return None  # a name no rubric folder can have
    version = None if learned is True else str(learned)
    rubric = load_rubric(name, version, root)
    if rubric is None:
        return None
    apply_rubric(judge, rubric, where=str(judge_dir(name, root) / rubric.get("version", "?")))
    return rubric.get("version")
