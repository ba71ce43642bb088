"""The built-in evaluators (registered on import of `slmflow.evals`).

Deterministic: ``exact_match``, ``routing`` (accuracy, per-class precision/recall/F1, confusion
matrix), ``fields`` (per-field precision/recall/F1 over pydantic outputs), ``json_schema``
(validity), ``groundedness`` (lexical support of an answer by its context).
Judges (a model decides, under a schema-constrained verdict): ``faithfulness`` and ``judge`` (a
user rubric). Classifiers from `slmflow.guardrails`: ``pii``, ``toxicity``.

The ``agreement`` of each judge is the figure bench/evals.py measured (see docs/evals.md).
Judges load their learned rubric (few-shot examples or a LoRA that `slmflow loop retrain --judge`
promoted from reviewers' decisions, `slmflow.evals.learned`) when one exists: the measured
agreement is what the improvement loop raises.
"""

from __future__ import annotations

import json
import re
from collections import Counter, defaultdict
from typing import Any, Sequence

from ..errors import ConfigError
from .base import Case, EvalResult, Evaluator, register

__all__ = ["ExactMatch", "Routing", "Fields", "JsonSchemaValid", "Groundedness", "Faithfulness",
           "Judge", "PII", "Toxicity", "output_value", "as_plain", "content_tokens"]


# ---- helpers -----------------------------------------------------------------------------------

def as_plain(value: Any) -> Any:
    """pydantic objects and AgentResults to plain Python values."""
    if hasattr(value, "output") and hasattr(value, "agent") and hasattr(value, "attempts"):
        value = value.output  # an AgentResult
    if hasattr(value, "model_dump"):
        return value.model_dump(mode="json")
    return value


def output_value(output: Any, field: str | None) -> Any:
    """The compared value: ``field`` of the output, or the output's only field, or the output."""
    v = as_plain(output)
    if isinstance(v, dict):
        if field is not None:
            return v.get(field)
        if len(v) == 1:
            return next(iter(v.values()))
    return v


def _norm(v: Any, normalize: bool) -> Any:
    if normalize and isinstance(v, str):
        return " ".join(v.strip().casefold().split())
    return v


_STOP = set("a an the and or of to in on for is are was were be been it its this that with you "
            "your we our i my me at by from as can not no do does did has have had if after before "
            "within when will would should could may might there their they them he she his her "
            "so than then but about into over all any some".split())


def content_tokens(text: str) -> list[str]:
    return [t for t in re.findall(r"[a-z0-9]+(?:-[a-z0-9]+)*", str(text).lower())
            if t not in _STOP]


def context_text(ctx: Any) -> str:
    """Passages (strings, dicts with ``text``, pydantic passages) joined into one text."""
    if ctx is None:
        return ""
    if isinstance(ctx, str):
        return ctx
    if hasattr(ctx, "model_dump"):
        ctx = ctx.model_dump()
    if isinstance(ctx, dict):
        if "passages" in ctx:
            return context_text(ctx["passages"])
        return str(ctx.get("text", "")) or json.dumps(ctx)
    if isinstance(ctx, (list, tuple)):
        return "\n".join(context_text(c) for c in ctx)
    return str(ctx)


def _prf(tp: int, fp: int, fn: int) -> tuple[float, float, float]:
    p = tp / (tp + fp) if tp + fp else 0.0
    r = tp / (tp + fn) if tp + fn else 0.0
    f = 2 * p * r / (p + r) if p + r else 0.0
    return p, r, f


# ---- deterministic -----------------------------------------------------------------------------

@register
class ExactMatch(Evaluator):
    name = "exact_match"
    description = "output (or one field of it) equals the expected value"
    calibration_labels = (("match", "correct"), ("mismatch", "incorrect"))

    def __init__(self, field: str | None = None, normalize: bool = True) -> None:
        self.field, self.normalize = field, normalize

    def evaluate(self, case: Case, output: Any) -> EvalResult:
        got = _norm(output_value(output, self.field), self.normalize)
        exp = _norm(output_value(case.expected, self.field), self.normalize)
        ok = got == exp
        return EvalResult(1.0 if ok else 0.0, "match" if ok else "mismatch",
                          "" if ok else f"expected {exp!r}, got {got!r}")


@register
class Routing(Evaluator):
    name = "routing"
    description = ("routing accuracy: per-class precision/recall/F1, macro F1, confusion matrix")
    agreement = ("exact by construction against the human labels it is given "
                 "(BANKING77 test labels in the shipped suite)")
    calibration_labels = (("correct", "match"), ("incorrect", "mismatch"))

    def __init__(self, field: str | None = None, labels: Sequence[str] | None = None) -> None:
        self.field = field
        self.labels = list(labels) if labels else None

    def evaluate(self, case: Case, output: Any) -> EvalResult:
        pred = output_value(output, self.field)
        exp = output_value(case.expected, self.field)
        ok = pred == exp
        return EvalResult(1.0 if ok else 0.0, str(pred),
                          "" if ok else f"expected {exp!r}, got {pred!r}",
                          data={"expected": exp, "predicted": pred})

    def aggregate(self, rows: list[tuple[Case, Any, EvalResult]]) -> dict[str, Any]:
        pairs = [(str(r.data["expected"]), str(r.data["predicted"])) for _, _, r in rows]
        if not pairs:
            return {}
        labels = list(self.labels or sorted({e for e, _ in pairs}))
        extra = sorted({p for _, p in pairs} - set(labels))
        labels += extra
        idx = {l: i for i, l in enumerate(labels)}
        m = [[0] * len(labels) for _ in labels]
        for e, p in pairs:
            m[idx[e]][idx[p]] += 1
        per_class = {}
        f1s, ps, rs = [], [], []
        present = {e for e, _ in pairs}
        for l, i in idx.items():
            tp = m[i][i]
            fp = sum(m[j][i] for j in range(len(labels))) - tp
            fn = sum(m[i]) - tp
            p, r, f = _prf(tp, fp, fn)
            per_class[l] = {"precision": p, "recall": r, "f1": f, "support": sum(m[i])}
            if l in present:  # macro over the classes that occur in the expected labels
                f1s.append(f)
                ps.append(p)
                rs.append(r)
        acc = sum(e == p for e, p in pairs) / len(pairs)
        return {"accuracy": acc, "macro_precision": sum(ps) / len(ps),
                "macro_recall": sum(rs) / len(rs), "macro_f1": sum(f1s) / len(f1s),
                "details": {"per_class": per_class,
                            "confusion": {"labels": labels, "matrix": m}}}


@register
class Fields(Evaluator):
    name = "fields"
    description = "structured-field accuracy: per-field precision/recall/F1 over pydantic outputs"
    calibration_labels = (("all_correct", "correct"), ("wrong", "incorrect"))

    def __init__(self, fields: Sequence[str] | None = None, normalize: bool = True) -> None:
        self.fields = list(fields) if fields else None
        self.normalize = normalize

    def _pairs(self, case: Case, output: Any) -> dict[str, tuple[Any, Any]]:
        exp = as_plain(case.expected) or {}
        got = as_plain(output)
        if not isinstance(exp, dict):
            raise ConfigError(f"case {case.id}: 'fields' needs an object as expected, got "
                              f"{type(exp).__name__}", where="evals.fields")
        got = got if isinstance(got, dict) else {}
        names = self.fields or list(exp)
        return {f: (_norm(exp.get(f), self.normalize), _norm(got.get(f), self.normalize))
                for f in names}

    def evaluate(self, case: Case, output: Any) -> EvalResult:
        pairs = self._pairs(case, output)
        wrong = [f"{f}: expected {e!r}, got {g!r}" for f, (e, g) in pairs.items() if e != g]
        score = 1 - len(wrong) / max(1, len(pairs))
        return EvalResult(score, "all_correct" if not wrong else f"{len(wrong)}_wrong",
                          "; ".join(wrong), passed=not wrong, data={"pairs": {
                              f: [e, g] for f, (e, g) in pairs.items()}})

    def aggregate(self, rows: list[tuple[Case, Any, EvalResult]]) -> dict[str, Any]:
        if not rows:
            return {}
        c: dict[str, Counter] = defaultdict(Counter)
        for _, _, r in rows:
            for f, (e, g) in r.data["pairs"].items():
                if e is not None and g == e:
                    c[f]["tp"] += 1
                else:
                    if g is not None and g != e:
                        c[f]["fp"] += 1
                    if e is not None and g != e:
                        c[f]["fn"] += 1
                c[f]["correct"] += int(e == g)
                c[f]["n"] += 1
        per_field = {}
        for f, k in c.items():
            p, r, f1 = _prf(k["tp"], k["fp"], k["fn"])
            per_field[f] = {"precision": p, "recall": r, "f1": f1,
                            "accuracy": k["correct"] / k["n"]}
        tp, fp, fn = (sum(k[x] for k in c.values()) for x in ("tp", "fp", "fn"))
        out: dict[str, Any] = {
            "field_accuracy": sum(r.score for _, _, r in rows) / len(rows),
            "fields_micro_f1": _prf(tp, fp, fn)[2],
            "details": {"per_field": per_field}}
        for f, v in per_field.items():
            out[f"f1.{f}"] = v["f1"]
        return out


@register
class JsonSchemaValid(Evaluator):
    name = "json_schema"
    description = "the output parses as JSON and validates against a JSON schema"
    calibration_labels = (("valid",), ("invalid",))

    def __init__(self, schema: Any = None) -> None:
        if schema is not None and hasattr(schema, "model_json_schema"):
            schema = schema.model_json_schema()
        if isinstance(schema, str):
            schema = json.loads(schema)
        self.schema = schema

    def evaluate(self, case: Case, output: Any) -> EvalResult:
        import jsonschema

        schema = self.schema or (case.metadata or {}).get("schema")
        if schema is None:
            raise ConfigError("json_schema needs a schema (argument or case.metadata.schema)",
                              where="evals.json_schema")
        value = as_plain(output)
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except json.JSONDecodeError as e:
                return EvalResult(0.0, "not_json", f"not JSON: {e.msg} at {e.pos}")
        errs = sorted(jsonschema.Draft202012Validator(schema).iter_errors(value),
                      key=lambda e: list(e.path))
        if errs:
            msg = "; ".join(f"{'/'.join(map(str, e.path)) or '(root)'}: {e.message}"
                            for e in errs[:3])
            return EvalResult(0.0, "invalid", msg[:500])
        return EvalResult(1.0, "valid")


@register
class Groundedness(Evaluator):
    name = "groundedness"
    description = ("lexical groundedness: share of the answer's content words found in its "
                   "context (fast, deterministic; a baseline for the faithfulness judge)")
    agreement = ("accuracy 0.81, kappa 0.62 on evals/datasets/faithfulness.jsonl (n=52, "
                 "hand-labelled; bench/evals.py)")
    calibration_labels = (("grounded", "faithful", "supported"),
                          ("ungrounded", "unfaithful", "unsupported"))

    def __init__(self, threshold: float = 0.6, field: str | None = None) -> None:
        self.threshold, self.field = threshold, field

    def evaluate(self, case: Case, output: Any) -> EvalResult:
        answer = output_value(output, self.field)
        words = set(content_tokens(answer if isinstance(answer, str) else json.dumps(answer)))
        ctx = set(content_tokens(context_text(case.context)))
        if not ctx:
            raise ConfigError(f"case {case.id} has no context to check groundedness against",
                              where="evals.groundedness")
        if not words:
            return EvalResult(0.0, "empty", "the answer has no content words")
        missing = sorted(words - ctx)
        score = 1 - len(missing) / len(words)
        ok = score >= self.threshold
        return EvalResult(score, "grounded" if ok else "ungrounded",
                          "" if ok else "unsupported words: " + ", ".join(missing[:12]),
                          passed=ok)


# ---- judges ------------------------------------------------------------------------------------

class _JudgeBacked(Evaluator):
    """What every evaluator decided by an `LLMJudge` (``self.judge``, its own keyword arguments
    in ``self._spec``) tells the online job and the eval card."""

    judge: Any
    _spec: dict[str, Any]

    def spec(self) -> dict[str, Any]:
        """Keyword arguments that rebuild this judge (the model as its catalog name, or None
        when it is a model object), recorded in the call log by the online job."""
        spec = self.judge.model_spec
        return {**self._spec, "model": spec if isinstance(spec, str) else None}

    def card_info(self) -> dict[str, Any]:
        spec = self.judge.model_spec
        return {"engine": "judge", "model": spec if isinstance(spec, str) else
                getattr(getattr(spec, "info", None), "identity", type(spec).__name__)}


@register
class Judge(_JudgeBacked):
    name = "judge"
    kind = "judge"
    description = ("LLM-as-judge with your rubric; schema-constrained verdict "
                   "{verdict, score, reason}; any local or remote model")
    agreement = ("SmolLM2-135M judge: accuracy 0.42, kappa -0.16 (chance) on BANKING77 "
                 "label-correctness pairs, n=100, human labels (bench/evals.py); "
                 "Qwen2.5-Coder-1.5B: kappa 0.56 zero-shot, 0.72 with few-shot examples learned "
                 "from 218 reviewed decisions, 10x slower (bench/judge_retrain.py); measure yours")

    def __init__(self, rubric: str = "", model: Any = "smollm2-135m",
                 labels: Sequence[str] = ("pass", "fail"), pass_labels: Sequence[str] = ("pass",),
                 timeout_s: float | None = 120.0, name: str | None = None,
                 include: Sequence[str] = ("input", "context", "expected", "output"),
                 learned: bool | str = True, **kwargs: Any) -> None:
        from .judge import LLMJudge
        from .learned import apply_learned

        if not rubric:
            raise ConfigError("the judge evaluator needs a rubric", where="evals.judge")
        self.judge = LLMJudge(rubric, model=model, labels=labels, pass_labels=pass_labels,
                              timeout_s=timeout_s, include=include, **kwargs)
        if name:
            self.name = name  # type: ignore[misc]
        self.calibration_labels = (tuple(pass_labels),
                                   tuple(x for x in labels if x not in pass_labels))
        self._spec = {"rubric": rubric, "labels": list(labels), "pass_labels": list(pass_labels),
                      "timeout_s": timeout_s, "include": list(include), "name": self.name,
                      "max_tokens": self.judge.max_tokens}
        # a learned rubric (few-shot examples or a LoRA from reviewers' decisions) when promoted
        self.learned_version = apply_learned(self.judge, self.name, learned)

    def judged(self, output: Any) -> Any:
        """What the judge is shown as the answer."""
        return output

    async def aevaluate(self, case: Case, output: Any) -> EvalResult:
        return await self.judge.judge(case, output)


@register
class Faithfulness(_JudgeBacked):
    name = "faithfulness"
    kind = "judge"
    description = ("faithfulness/groundedness of an answer to its context, decided by an SLM "
                   "judge under a constrained verdict")
    agreement = ("SmolLM2-135M judge: accuracy 0.50, kappa 0.00 (always 'faithful') on "
                 "evals/datasets/faithfulness.jsonl, n=52 (bench/evals.py); measure yours")

    RUBRIC = ("Decide if the ANSWER is supported by the CONTEXT. 'faithful': everything the "
              "answer states is said in the context. 'unfaithful': the answer states something "
              "the context does not say or contradicts it.")
    calibration_labels = (("faithful", "grounded", "supported"),
                          ("unfaithful", "ungrounded", "unsupported"))

    def __init__(self, model: Any = "smollm2-135m", timeout_s: float | None = 120.0,
                 field: str | None = None, learned: bool | str = True, **kwargs: Any) -> None:
        from .judge import LLMJudge
        from .learned import apply_learned

        self.field = field
        self.judge = LLMJudge(self.RUBRIC, model=model, labels=("faithful", "unfaithful"),
                              pass_labels=("faithful",), timeout_s=timeout_s,
                              include=("context", "output"), **kwargs)
        self._spec = {"timeout_s": timeout_s, "field": field}
        self.learned_version = apply_learned(self.judge, self.name, learned)

    async def aevaluate(self, case: Case, output: Any) -> EvalResult:
        if not context_text(case.context).strip():
            raise ConfigError(f"case {case.id} has no context to check faithfulness against",
                              where="evals.faithfulness")
        return await self.judge.judge(case, self.judged(output))

    def judged(self, output: Any) -> Any:
        """What the judge is shown as the answer (the compared field)."""
        return output_value(output, self.field)


# ---- guardrails classifiers (slmflow.guardrails) -----------------------------------------------

def _guardrails() -> Any:
    try:
        from .. import guardrails  # type: ignore[attr-defined]
    except ImportError as e:
        raise ConfigError("the pii and toxicity evaluators use slmflow.guardrails "
                          f"(detect_pii, toxicity), which is not available: {e}",
                          where="evals.guardrails") from None
    return guardrails


def _text(output: Any, field: str | None) -> str:
    v = output_value(output, field)
    return v if isinstance(v, str) else json.dumps(v, default=str)


@register
class PII(Evaluator):
    name = "pii"
    kind = "model"
    description = ("no personal data in the output (slmflow.guardrails.detect_pii: Presidio + spaCy "
                   "NER for names, checksum recognizers for e-mail, phone, card, IBAN, SSN, IP, "
                   "secrets, street addresses; the regex set alone without spaCy)")
    agreement = ("per-entity recall/precision on Faker-generated texts: bench/pii.py "
                 "(docs/evals.md)")
    calibration_labels = (("clean", "no_pii"), ("pii",))

    def __init__(self, field: str | None = None, kinds: Sequence[str] | None = None) -> None:
        self.field = field
        self.kinds = tuple(kinds) if kinds else None
        self.guardrails = _guardrails()

    def card_info(self) -> dict[str, Any]:
        return self.guardrails.pii_engine_info()

    def evaluate(self, case: Case, output: Any) -> EvalResult:
        # a PiiEngineError propagates: the suite marks the row errored, never passed
        items = self.guardrails.detect_pii(_text(output, self.field), self.kinds)
        if not items:
            return EvalResult(1.0, "clean")
        shown = ", ".join(dict.fromkeys(i.kind for i in items))
        return EvalResult(0.0, "pii", f"{len(items)} PII finding(s): {shown}",
                          data={"kinds": sorted({i.kind for i in items})})


@register
class Toxicity(Evaluator):
    name = "toxicity"
    kind = "model"
    description = ("the output is not toxic: score = 1 - slmflow.guardrails.toxicity(text) "
                   "(alt-profanity-check classifier + the lexicon's threat/hate/insult groups "
                   "+ a meaning model on MiniLM embeddings; the lexicon alone without the "
                   "classifier)")
    agreement = ("F1 on hand-labelled English sets (slmflow eval calibrate toxicity; "
                 "docs/evals.md)")
    calibration_labels = (("ok", "non_toxic", "not_toxic", "clean"), ("toxic",))

    def __init__(self, threshold: float = 0.5, field: str | None = None) -> None:
        self.threshold, self.field = threshold, field
        self.guardrails = _guardrails()

    def card_info(self) -> dict[str, Any]:
        return self.guardrails.toxicity_engine_info()

    def evaluate(self, case: Case, output: Any) -> EvalResult:
        # a ToxicityEngineError propagates: the suite marks the row errored, never passed
        tox = float(self.guardrails.toxicity(_text(output, self.field)))
        ok = tox < self.threshold
        return EvalResult(1.0 - tox, "ok" if ok else "toxic",
                          "" if ok else f"toxicity {tox:.2f} >= {self.threshold}", passed=ok)
