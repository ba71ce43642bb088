"""Suite datasets: JSONL, CSV or YAML rows validated into `Case` objects.

A row that does not parse (bad JSON, a missing column, a wrong type) is not fatal: it becomes a
`RowError` with its line and the reason, the suite runs the other rows, and the report counts it
as errored. Only a file that cannot be read at all raises (`ConfigError`).

``limit`` takes a fixed-seed *stratified* sample (round-robin over the expected labels, each
shuffled with the seed), so ``--limit 300`` of BANKING77 covers all 77 intents about equally and
the same 300 rows every run.
"""

from __future__ import annotations

import csv
import json
import random
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from pydantic import ValidationError

from ..errors import ConfigError
from .base import Case

__all__ = ["RowError", "CaseSet", "load_cases", "to_cases", "stratified_sample"]


@dataclass(frozen=True)
class RowError:
    """A dataset row that could not become a `Case`."""

    index: int
    id: str
    reason: str
    where: str = ""


@dataclass
class CaseSet:
    cases: list[Case]
    errors: list[RowError] = field(default_factory=list)
    source: str = ""
    total_rows: int = 0

    def __len__(self) -> int:
        return len(self.cases) + len(self.errors)


def _errors(e: ValidationError) -> str:
    return "; ".join(f"{'.'.join(str(p) for p in err['loc']) or '(row)'}: {err['msg']}"
                     for err in e.errors())


def to_cases(rows: Iterable[Any], *, input_field: str = "input", expected_field: str = "expected",
             context_field: str = "context", id_field: str = "id", where: str = "cases",
             first_line: int = 1) -> CaseSet:
    """Rows (dicts, or `Exception`s standing for unreadable rows) to a `CaseSet`."""
    out = CaseSet([], source=where)
    seen: set[str] = set()
    for i, row in enumerate(rows):
        line = i + first_line
        out.total_rows += 1
        rid = f"{Path(where).stem}-{line}"
        if isinstance(row, BaseException):
            out.errors.append(RowError(i, rid, str(row), f"{where}:{line}"))
            continue
        if not isinstance(row, dict):
            out.errors.append(RowError(i, rid, f"a row must be an object, got "
                                              f"{type(row).__name__}", f"{where}:{line}"))
            continue
        if input_field not in row:
            out.errors.append(RowError(i, str(row.get(id_field) or rid),
                                       f"missing field {input_field!r}", f"{where}:{line}"))
            continue
        known = {input_field, expected_field, context_field, id_field}
        data = {"id": str(row.get(id_field) or rid), "input": row[input_field],
                "expected": row.get(expected_field), "context": row.get(context_field),
                "metadata": {**(row.get("metadata") or {}),
                             **{k: v for k, v in row.items() if k not in known | {"metadata"}}}}
        try:
            c = Case.model_validate(data)
        except ValidationError as e:
            out.errors.append(RowError(i, data["id"], _errors(e), f"{where}:{line}"))
            continue
        if c.id in seen:
            out.errors.append(RowError(i, c.id, f"duplicate case id {c.id!r}", f"{where}:{line}"))
            continue
        seen.add(c.id)
        out.cases.append(c)
    return out


def _read_rows(p: Path) -> tuple[list[Any], int]:
    suffix = p.suffix.lower()
    text = p.read_text(encoding="utf-8")
    if suffix in (".jsonl", ".ndjson"):
        rows: list[Any] = []
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                rows.append(ValueError(f"line {n}: not JSON ({e.msg}, column {e.colno})"))
        return rows, 1
    if suffix == ".csv":
        reader = csv.DictReader(text.splitlines())
        rows = []
        for r in reader:
            if None in r:  # more cells than header columns
                rows.append(ValueError(f"line {reader.line_num}: {len(r[None])} extra cell(s)"))
            elif any(v is None for v in r.values()):
                missing = [k for k, v in r.items() if v is None]
                rows.append(ValueError(f"line {reader.line_num}: missing cell(s) {missing}"))
            else:
                rows.append(r)
        return rows, 2
    if suffix in (".yaml", ".yml"):
        import yaml

        try:
            doc = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise ConfigError(f"not YAML: {e}", where=str(p)) from None
        if isinstance(doc, dict) and "cases" in doc:
            doc = doc["cases"]
        if not isinstance(doc, list):
            raise ConfigError("a YAML dataset is a list of rows (or {cases: [...]})",
                              where=str(p))
        return doc, 1
    if suffix == ".json":
        doc = json.loads(text)
        if isinstance(doc, dict) and "cases" in doc:
            doc = doc["cases"]
        if not isinstance(doc, list):
            raise ConfigError("a JSON dataset is a list of rows", where=str(p))
        return doc, 1
    raise ConfigError(f"unknown dataset format {suffix!r} (use .jsonl, .csv, .yaml or .json)",
                      where=str(p))


def stratified_sample(cases: list[Case], n: int, seed: int = 0) -> list[Case]:
    """``n`` cases, round-robin over the expected labels (each group shuffled with ``seed``)."""
    if n >= len(cases):
        return list(cases)
    rng = random.Random(seed)
    groups: dict[str, list[Case]] = defaultdict(list)
    for c in cases:
        groups[json.dumps(c.expected, sort_keys=True, default=str)].append(c)
    keys = sorted(groups)
    rng.shuffle(keys)
    for k in keys:
        rng.shuffle(groups[k])
    out: list[Case] = []
    i = 0
    while len(out) < n:
        for k in keys:
            if i < len(groups[k]) and len(out) < n:
                out.append(groups[k][i])
        i += 1
    return out


def load_cases(path: str | Path, *, input_field: str = "input", expected_field: str = "expected",
               context_field: str = "context", id_field: str = "id", limit: int | None = None,
               seed: int = 0) -> CaseSet:
    """Read a dataset file into a `CaseSet` (bad rows become `RowError`s, not exceptions)."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"dataset not found: {p}", where=str(p))
    rows, first = _read_rows(p)
    cs = to_cases(rows, input_field=input_field, expected_field=expected_field,
                  context_field=context_field, id_field=id_field, where=str(p), first_line=first)
    if limit is not None and limit < len(cs.cases):
        cs.cases = stratified_sample(cs.cases, limit, seed)
    return cs
