"""Calibration: how far an evaluator agrees with human labels, written to its card.

    slmflow eval calibrate toxicity --data labelled.jsonl
    calibrate("toxicity", "labelled.jsonl") -> Calibration (accuracy, kappa, confusion, ...)

Why: an evaluator that flags outputs for the improvement loop is only as useful as its agreement
with people, and that agreement is a *measurement* on labelled data, not a claim. Each row of the
labelled file is one output and the human verdict on it:

    {"id": "r1", "output": "You idiot.", "label": "toxic"}
    {"id": "r2", "input": "...", "context": "policy text", "output": "answer", "label": "faithful"}

The human label maps to the evaluator's pass/fail verdict through the evaluator's
``calibration_labels`` (``toxicity``: ok / toxic, ``pii``: clean / pii, ``faithfulness``:
faithful / unfaithful, ...; ``pass`` / ``fail`` always work). A label outside them is a
`ConfigError` naming ``file:line``: a typo must not silently count as a disagreement.

Reported: accuracy, Cohen's kappa (agreement beyond chance: 0 is chance, 1 is perfect), the
confusion matrix (human label x evaluator verdict), recall per human label, precision/recall/F1
of the "fail" label (the thing the evaluator exists to catch), rows the evaluator could not judge
(errored: excluded from the figures and counted), cases/s, and the best threshold on the
evaluator's score (``EvalResult.score``; a row passes when ``score >= t``): the cut that
maximises kappa on this data (in-sample, so optimistic; measure it on other data before using it).

Cards: one JSON file per evaluator, ``{"evaluator": name, "measurements": [...]}``, one
measurement per data file (a new run on the same file replaces it). ``slmflow eval list`` shows
them. The built-ins' cards ship in ``slmflow/evals/cards/``; a user's go to
``$SLMFLOW_HOME/evals/cards/`` and are shown instead of a shipped one for the same data file.
"""

from __future__ import annotations

import asyncio
import datetime as _dt
import hashlib
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from .base import Case, Evaluator, create

__all__ = ["Calibration", "calibrate", "acalibrate", "load_labelled", "read_cards",
           "write_card", "shipped_cards_dir", "user_cards_dir", "agreement_line", "cohen_kappa"]

ALWAYS = (("pass",), ("fail",))


@dataclass
class Calibration:
    evaluator: str
    data: str
    n: int
    errored: int
    accuracy: float
    kappa: float
    labels: list[str]  # [pass label, fail label]
    confusion: dict[str, dict[str, int]]  # human label -> {evaluator verdict label -> count}
    recall: dict[str, float]  # per human label
    fail_precision: float
    fail_recall: float
    fail_f1: float
    best_threshold: dict[str, float] | None
    cases_per_s: float
    sha256: str = ""
    measured: str = ""
    options: dict[str, Any] = field(default_factory=dict)
    engine: dict[str, Any] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _labels_of(ev: Evaluator) -> tuple[tuple[str, ...], tuple[str, ...]]:
    pas, fail = getattr(ev, "calibration_labels", ALWAYS)
    return (tuple(dict.fromkeys([*pas, "pass"])), tuple(dict.fromkeys([*fail, "fail"])))


def load_labelled(path: str | Path, ev: Evaluator, *, output_field: str = "output",
                  label_field: str = "label", input_field: str = "input",
                  context_field: str = "context") -> list[tuple[Case, Any, bool, int]]:
    """(case, output, human says pass, line) per row; any bad row is a `ConfigError` naming
    ``file:line`` (calibration on a half-read file would be a wrong figure)."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"no labelled file at {p}", where="eval calibrate")
    pas, fail = _labels_of(ev)
    known = {**{x.casefold(): True for x in pas}, **{x.casefold(): False for x in fail}}
    rows: list[tuple[Case, Any, bool, int]] = []
    seen: set[str] = set()
    for i, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        where = f"{p}:{i}"
        try:
            d = json.loads(line)
        except json.JSONDecodeError as e:
            raise ConfigError(f"not JSON: {e.msg} at column {e.colno}", where=where) from None
        if not isinstance(d, dict):
            raise ConfigError(f"a row is a JSON object, got {type(d).__name__}", where=where)
        if output_field not in d:
            raise ConfigError(f"no {output_field!r} field (the output to judge)", where=where)
        lab = d.get(label_field)
        if not isinstance(lab, str) or lab.strip().casefold() not in known:
            raise ConfigError(
                f"unknown label {lab!r} for evaluator {ev.name!r}; expected one of "
                f"{', '.join(pas)} (pass) or {', '.join(fail)} (fail)", where=where)
        rid = str(d.get("id", i))
        if rid in seen:
            raise ConfigError(f"duplicate id {rid!r}", where=where)
        seen.add(rid)
        meta = d.get("metadata") if isinstance(d.get("metadata"), dict) else {}
        try:
            case = Case(id=rid, input=d.get(input_field) if input_field != output_field else "",
                        context=d.get(context_field), metadata=meta)
        except Exception as e:  # noqa: BLE001 - pydantic's message, placed
            raise ConfigError(f"bad row: {e}", where=where) from None
        rows.append((case, d[output_field], known[lab.strip().casefold()], i))
    if not rows:
        raise ConfigError("the labelled file has no rows", where=str(p))
    return rows


def cohen_kappa(pairs: list[tuple[bool, bool]]) -> tuple[float, float]:
    """(accuracy, Cohen's kappa) of (human, evaluator) pass/fail pairs."""
    n = len(pairs)
    if not n:
        return 0.0, 0.0
    acc = sum(a == b for a, b in pairs) / n
    ph, pe_ = sum(a for a, _ in pairs) / n, sum(b for _, b in pairs) / n
    pe = ph * pe_ + (1 - ph) * (1 - pe_)
    return acc, ((acc - pe) / (1 - pe) if pe < 1 else (1.0 if acc == 1 else 0.0))


def _best_threshold(scored: list[tuple[bool, float]], current: float | None
                    ) -> dict[str, float] | None:
    if len({s for _, s in scored}) < 2:
        return None
    vals = sorted({s for _, s in scored})
    cands = [vals[0]] + [(a + b) / 2 for a, b in zip(vals, vals[1:])] + [vals[-1] + 1e-9]
    best: tuple[float, float, float, float] | None = None
    for t in cands:
        acc, k = cohen_kappa([(h, s >= t) for h, s in scored])
        key = (round(k, 6), round(acc, 6), -abs(t - (current if current is not None else 0.5)))
        if best is None or key > best[:3]:
            best = (*key, t)  # type: ignore[assignment]
    assert best is not None
    t = best[3]
    acc, k = cohen_kappa([(h, s >= t) for h, s in scored])
    return {"threshold": round(t, 4), "accuracy": round(acc, 4), "kappa": round(k, 4)}


async def acalibrate(evaluator: str | Evaluator, data: str | Path, *,
                     concurrency: int = 1, timeout_s: float | None = None,
                     output_field: str = "output", label_field: str = "label",
                     input_field: str = "input", context_field: str = "context",
                     options: dict[str, Any] | None = None) -> Calibration:
    ev = create(evaluator, **(options or {})) if not isinstance(evaluator, Evaluator) \
        else evaluator
    rows = load_labelled(data, ev, output_field=output_field, label_field=label_field,
                         input_field=input_field, context_field=context_field)
    info = getattr(ev, "card_info", None)
    engine = info() if callable(info) else {}  # also loads the engine before the clock starts
    sem = asyncio.Semaphore(max(1, concurrency))
    results: list[Any] = [None] * len(rows)

    async def one(k: int) -> None:
        case, out, _, line = rows[k]
        async with sem:
            try:
                coro = ev.aevaluate(case, out)
                results[k] = await (asyncio.wait_for(coro, timeout_s) if timeout_s else coro)
            except Exception as e:  # noqa: BLE001 - an unjudged row, counted apart
                results[k] = f"{Path(data).name}:{line}: {type(e).__name__}: {e}"[:300]

    t0 = time.perf_counter()
    await asyncio.gather(*(one(k) for k in range(len(rows))))
    wall = max(time.perf_counter() - t0, 1e-9)
    pas, fail = _labels_of(ev)
    lp, lf = pas[0], fail[0]
    pairs, scored, errors = [], [], []
    conf = {lp: {lp: 0, lf: 0}, lf: {lp: 0, lf: 0}}
    for (case, _, human, _), r in zip(rows, results):
        if isinstance(r, str):
            errors.append(r)
            continue
        pairs.append((human, r.ok))
        conf[lp if human else lf][lp if r.ok else lf] += 1
        if r.score is not None:
            scored.append((human, float(r.score)))
    acc, kappa = cohen_kappa(pairs)
    tp, fn = conf[lf][lf], conf[lf][lp]
    fp = conf[lp][lf]
    fprec = tp / (tp + fp) if tp + fp else 0.0
    frec = tp / (tp + fn) if tp + fn else 0.0
    recall = {lab: (conf[lab][lab] / sum(conf[lab].values()) if sum(conf[lab].values()) else 0.0)
              for lab in (lp, lf)}
    return Calibration(
        evaluator=ev.name, data=Path(data).name, n=len(pairs), errored=len(errors),
        accuracy=round(acc, 4), kappa=round(kappa, 4), labels=[lp, lf], confusion=conf,
        recall={k: round(v, 4) for k, v in recall.items()}, fail_precision=round(fprec, 4),
        fail_recall=round(frec, 4),
        fail_f1=round(2 * fprec * frec / (fprec + frec), 4) if fprec + frec else 0.0,
        best_threshold=_best_threshold(scored, getattr(ev, "threshold", None)) if pairs
        else None,
        cases_per_s=round(len(rows) / wall, 2),
        sha256=hashlib.sha256(Path(data).read_bytes()).hexdigest(),
        measured=_dt.date.today().isoformat(),
        options={k: v for k, v in (options or {}).items()},
        engine=engine, errors=errors[:20])


def calibrate(evaluator: str | Evaluator, data: str | Path, **kw: Any) -> Calibration:
    """`acalibrate` for synchronous callers."""
    return asyncio.run(acalibrate(evaluator, data, **kw))


# ---- cards -------------------------------------------------------------------------------------

def shipped_cards_dir() -> Path:
    return Path(__file__).with_name("cards")


def user_cards_dir() -> Path:
    """``$SLMFLOW_HOME/evals/cards`` (not created here: `eval list` must not make folders)."""
    import os

    return (Path(os.environ.get("SLMFLOW_HOME") or ".slmflow").expanduser().resolve()
            / "evals" / "cards")


def write_card(cal: Calibration, path: str | Path | None = None) -> Path:
    """Add (or replace, for the same data file) this measurement on the evaluator's card."""
    p = Path(path) if path else user_cards_dir() / f"{cal.evaluator}.json"
    if p.suffix != ".json":  # a directory
        p = p / f"{cal.evaluator}.json"
    card: dict[str, Any] = {"evaluator": cal.evaluator, "measurements": []}
    if p.is_file():
        try:
            card = json.loads(p.read_text())
        except json.JSONDecodeError as e:
            raise ConfigError(f"the card is not JSON ({e.msg}); fix or remove it",
                              where=str(p)) from None
    ms = [m for m in card.get("measurements", []) if m.get("data") != cal.data]
    d = cal.to_dict()
    d.pop("errors", None)
    card["measurements"] = [*ms, d]
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps(card, indent=2, default=str) + "\n")
    return p


def read_cards(name: str) -> list[dict[str, Any]]:
    """Measurements for an evaluator: the shipped card's, with the user's replacing those on the
    same data file. A card that does not parse is skipped (``eval list`` must not fail on it)."""
    by: dict[str, dict[str, Any]] = {}
    for d in (shipped_cards_dir(), user_cards_dir()):
        p = d / f"{name}.json"
        try:
            ms = json.loads(p.read_text()).get("measurements", []) if p.is_file() else []
        except (OSError, json.JSONDecodeError, AttributeError):
            ms = []
        for m in ms:
            if isinstance(m, dict) and m.get("data"):
                by[m["data"]] = m
    return list(by.values())


def agreement_line(m: dict[str, Any]) -> str:
    lf = (m.get("labels") or ["pass", "fail"])[-1]
    eng = m.get("engine") or {}
    what = f" [{eng.get('engine')}]" if eng.get("engine") else ""
    return (f"accuracy {m['accuracy']:.2f}, kappa {m['kappa']:.2f}, F1({lf}) "
            f"{m.get('fail_f1', 0):.2f} on {m['data']} (n={m['n']}){what}")
