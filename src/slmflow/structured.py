"""Structured output that never breaks: JSON schema in, validated object out.

Why this lives apart from the backends: every backend turns the *same* `OutputSpec` into its own
decoding constraint (a GBNF grammar for llama.cpp, an llguidance matcher on the transformers path,
`response_format`/`tools` for an OpenAI-compatible server), and every backend's text is checked by
the *same* validator, with the *same* single repair step. So "structured output" means one thing
whatever runs the model.

The guarantee and its limit: constrained decoding makes every emitted token keep the output a
valid prefix of the schema's language. What it cannot do is make the model *finish* within
`max_tokens` (a 135M model may ramble inside a free-text string), nor check rules the grammar
cannot express (pydantic validators). Hence one repair step: re-generate once under a *tightened*
schema (unbounded strings and arrays get bounds) with more room; if that also fails, raise
`StructuredOutputError` carrying the text and the validation errors, never a half-parsed object.

Schemas from outside are bounded (`SchemaLimits`, `check_limits`): a schema is a program for the
constraint compiler, and its size is set by counts in it, not by its length in bytes. llama-cpp-
python's converter spells ``minItems: N`` / ``maxLength: N`` out as N copies of a rule (a request
with ``minItems: 100000000`` built a 1.8 GB grammar and froze a gateway for 25 s); llama.cpp's own
parser refuses a grammar with a bounded repetition over about 1000 (measured: ``maxItems`` 1000
parses, 1001 does not), and llama-cpp-python then crashes the process on the refused grammar; a
repetition nested ~50,000 deep crashes the parser itself. A request's schema is therefore checked
before anything is built from it: nesting depth, size, every count (``minItems``, ``maxItems``,
``minLength``, ``maxLength``, ``{m,n}`` in a pattern), the minimum counts against the request's
token budget (an answer of ``max_tokens`` tokens cannot hold more items than that), enum size,
pattern length and only local ``$ref``s. A violation is a `SchemaLimitError` naming the limit,
the value and where in the schema. `check_schema` keeps a depth bound for every schema, so a deeply
nested one is a `SchemaError`, never a `RecursionError` inside jsonschema.

Tool calls are structured output too: the tools' argument schemas become one `anyOf` of
`{"name": <const>, "arguments": <schema>}` objects, so a model can only name a tool that exists
and only pass arguments that validate.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Sequence

from .errors import SchemaError, StructuredOutputError
from .types import Message, Response, ToolCall, ToolSpec

RESPOND_TOOL = "respond"
"""Pseudo-tool offered with ``tool_choice="auto"``: the model answers in text instead of calling."""

_STRING_BOUND = 64
_ARRAY_BOUND = 6
_UNBOUNDED = 10_000


def _is_pydantic_model(obj: Any) -> bool:
    return isinstance(obj, type) and hasattr(obj, "model_json_schema") and hasattr(
        obj, "model_validate")


class SchemaLimitError(SchemaError):
    """A schema asks for more than `SchemaLimits` allow (``limit`` names which one)."""


@dataclass(frozen=True)
class SchemaLimits:
    """What a schema from outside (a request's ``response_format``) may ask for.

    max_depth: nesting of JSON objects and arrays in the schema document (a property's schema is
    two levels below its object: ``properties`` -> name). max_bytes: the schema as compact JSON.
    max_count: any ``minItems``, ``maxItems``, ``minLength``, ``maxLength``, ``minProperties``,
    ``maxProperties`` and ``{m,n}`` count in a ``pattern`` (llama.cpp refuses bounded repetitions
    over ~1000). chars_per_token: the most characters one token is taken to add to a string, for
    checking ``minLength`` against ``max_tokens`` (``minItems`` is checked at one token per item).
    max_enum: values in one ``enum``. max_pattern: characters in one ``pattern``.
    max_properties: properties of one object schema (the converter's work grows with the square
    of the optional ones: 500 take 0.4 s, 1000 overflow its recursion).
    """

    max_depth: int = 64
    max_bytes: int = 65_536
    max_count: int = 512
    chars_per_token: int = 8
    max_enum: int = 512
    max_pattern: int = 512
    max_properties: int = 256


_COUNT_KEYS = ("minItems", "maxItems", "minLength", "maxLength", "minProperties",
               "maxProperties", "minContains", "maxContains")
_QUANTIFIER = re.compile(r"(?<!\\)\{\s*(\d*)\s*(?:,\s*(\d*)\s*)?\}")
# Keywords whose values are data, not schemas: an "enum" of objects holding a "minItems" key is
# not a constraint. (Their nesting still counts towards max_depth and max_bytes.)
_DATA_KEYS = ("enum", "const", "default", "examples")


def _limit(limit: str, message: str, where: str, path: str, value: Any, allowed: Any) -> None:
    raise SchemaLimitError(f"{path or '(root)'}: {message} (limit {limit}: {allowed})",
                           where=where, limit=limit, path=path or "(root)", value=value,
                           allowed=allowed)


def schema_depth(schema: Any, stop_at: int | None = None) -> int:
    """Nesting depth of a JSON document (objects and arrays), without recursion; stops counting
    past ``stop_at``."""
    depth, stack = 0, [(schema, 1)]
    while stack:
        node, d = stack.pop()
        if isinstance(node, dict):
            children = node.values()
        elif isinstance(node, list):
            children = node
        else:
            continue
        depth = max(depth, d)
        if stop_at is not None and depth > stop_at:
            return depth
        stack.extend((c, d + 1) for c in children if isinstance(c, (dict, list)))
    return depth


def check_limits(schema: Any, limits: SchemaLimits | None = None, *,
                 max_tokens: int | None = None, where: str = "schema") -> None:
    """Raise `SchemaLimitError` if `schema` asks for more than `limits` allow.

    Checked before the schema is validated or compiled (so it is cheap and cannot recurse):
    depth, size, counts, minimum counts against ``max_tokens`` (when given), enum size, pattern
    length, and ``$ref`` (local ``#/...`` only: nothing is fetched for a request).
    """
    lim = limits or SchemaLimits()
    depth = schema_depth(schema, stop_at=lim.max_depth)
    if depth > lim.max_depth:
        _limit("max_depth", f"the schema nests more than {lim.max_depth} levels deep", where, "",
               depth, lim.max_depth)
    try:
        size = len(json.dumps(schema, separators=(",", ":"), allow_nan=False))
    except (TypeError, ValueError) as e:
        raise SchemaError(f"the schema is not plain JSON: {e}", where=where) from None
    if size > lim.max_bytes:
        _limit("max_bytes", f"the schema is {size} bytes as JSON", where, "", size,
               lim.max_bytes)
    stack: list[tuple[Any, str]] = [(schema, "")]
    while stack:
        node, path = stack.pop()
        if isinstance(node, list):
            stack.extend((x, f"{path}/{i}") for i, x in enumerate(node))
            continue
        if not isinstance(node, dict):
            continue
        for key in _COUNT_KEYS:
            n = node.get(key)
            if isinstance(n, bool) or not isinstance(n, (int, float)):
                continue
            if n > lim.max_count:
                _limit("max_count", f"{key} is {n}", where, f"{path}/{key}", n, lim.max_count)
        if max_tokens is not None:
            n = node.get("minItems")
            if isinstance(n, (int, float)) and not isinstance(n, bool) and n > max_tokens:
                _limit("max_tokens", f"minItems is {n}, more items than an answer of "
                       f"{max_tokens} tokens can hold", where, f"{path}/minItems", n, max_tokens)
            n = node.get("minLength")
            room = max_tokens * lim.chars_per_token
            if isinstance(n, (int, float)) and not isinstance(n, bool) and n > room:
                _limit("max_tokens", f"minLength is {n}, more characters than an answer of "
                       f"{max_tokens} tokens can hold ({lim.chars_per_token} per token)", where,
                       f"{path}/minLength", n, max_tokens)
        props = node.get("properties")
        if isinstance(props, dict) and len(props) > lim.max_properties:
            _limit("max_properties", f"the object has {len(props)} properties", where,
                   f"{path}/properties", len(props), lim.max_properties)
        enum = node.get("enum")
        if isinstance(enum, list) and len(enum) > lim.max_enum:
            _limit("max_enum", f"the enum has {len(enum)} values", where, f"{path}/enum",
                   len(enum), lim.max_enum)
        pattern = node.get("pattern")
        if isinstance(pattern, str):
            if len(pattern) > lim.max_pattern:
                _limit("max_pattern", f"the pattern is {len(pattern)} characters", where,
                       f"{path}/pattern", len(pattern), lim.max_pattern)
            for m in _QUANTIFIER.finditer(pattern):
                for g in m.groups():
                    if g and int(g) > lim.max_count:
                        _limit("max_count", f"the pattern repeats {m.group(0)}", where,
                               f"{path}/pattern", int(g), lim.max_count)
        ref = node.get("$ref")
        if isinstance(ref, str) and not ref.startswith("#"):
            raise SchemaLimitError(f"{path or '(root)'}: $ref {ref[:100]!r} is not local: only "
                                   "'#/...' references are allowed", where=where, limit="$ref",
                                   path=path or "(root)", value=ref[:100], allowed="#/...")
        for k, v in node.items():
            if k not in _DATA_KEYS and isinstance(v, (dict, list)):
                stack.append((v, f"{path}/{k}"))


def check_schema(schema: dict[str, Any], where: str = "schema") -> None:
    """Raise `SchemaError` (naming `where` and the offending path) if `schema` is not valid."""
    if not isinstance(schema, dict):
        raise SchemaError(f"a JSON schema must be an object, got {type(schema).__name__}",
                          where=where)
    max_depth = SchemaLimits.max_depth
    depth = schema_depth(schema, stop_at=max_depth)
    if depth > max_depth:  # jsonschema recurses per level: a RecursionError well before 1000
        raise SchemaLimitError(f"the schema nests more than {max_depth} levels deep (JSON objects "
                               "and arrays)", where=where, limit="max_depth", value=depth,
                               allowed=max_depth)
    import jsonschema

    try:
        jsonschema.Draft202012Validator.check_schema(schema)
    except jsonschema.SchemaError as e:
        path = "/".join(str(p) for p in e.absolute_path) or "(root)"
        raise SchemaError(f"invalid JSON schema at {path}: {e.message}", where=where) from None


def _hoist_defs(schemas: Sequence[dict[str, Any]]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Move each sub-schema's ``$defs`` to one root, so ``#/$defs/X`` refs still resolve."""
    defs: dict[str, Any] = {}
    out = []
    for s in schemas:
        s = dict(s)
        for k, v in (s.pop("$defs", None) or {}).items():
            if k in defs and defs[k] != v:
                raise SchemaError(f"two tools define different $defs named {k!r}",
                                  where="tools")
            defs[k] = v
        out.append(s)
    return out, defs


def tool_call_schema(tools: Sequence[ToolSpec], tool_choice: str = "required") -> dict[str, Any]:
    """The JSON schema a tool-calling answer must follow: one of the tools, with valid arguments."""
    names = [t.name for t in tools]
    if len(set(names)) != len(names):
        raise SchemaError(f"tool names must be unique, got {names}", where="tools")
    params, defs = _hoist_defs([t.parameters for t in tools])
    options = [
        {"type": "object",
         "properties": {"name": {"const": t.name}, "arguments": p},
         "required": ["name", "arguments"], "additionalProperties": False}
        for t, p in zip(tools, params)
    ]
    if tool_choice == "auto":
        options.append({
            "type": "object",
            "properties": {"name": {"const": RESPOND_TOOL},
                           "arguments": {"type": "object",
                                         "properties": {"content": {"type": "string"}},
                                         "required": ["content"],
                                         "additionalProperties": False}},
            "required": ["name", "arguments"], "additionalProperties": False})
    schema: dict[str, Any] = {"anyOf": options} if len(options) > 1 else options[0]
    if defs:
        schema["$defs"] = defs
    return schema


def tightened(schema: Any) -> Any:
    """A copy of `schema` whose unbounded strings and arrays get bounds (the repair step)."""
    if isinstance(schema, list):
        return [tightened(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: tightened(v) for k, v in schema.items()}
    kind = out.get("type")
    if kind == "string" and "maxLength" not in out and "enum" not in out and "const" not in out \
            and "pattern" not in out and "format" not in out:
        out["maxLength"] = _STRING_BOUND
    if kind == "array" and "maxItems" not in out:
        out["maxItems"] = max(_ARRAY_BOUND, out.get("minItems", 0))
    return out


def token_bound(schema: Any, defs: dict[str, Any] | None = None, depth: int = 0) -> int:
    """An upper estimate of the tokens a JSON value of `schema` takes (one token per character
    of a bounded string, plus syntax). `_UNBOUNDED` where the schema allows unbounded text."""
    if depth > 12 or not isinstance(schema, dict):
        return _UNBOUNDED
    defs = defs if defs is not None else schema.get("$defs", {})
    if "$ref" in schema:
        return token_bound(defs.get(schema["$ref"].rsplit("/", 1)[-1], {}), defs, depth + 1)
    for key in ("anyOf", "oneOf"):
        if key in schema:
            return max(token_bound(s, defs, depth + 1) for s in schema[key])
    if "const" in schema or "enum" in schema:
        values = schema.get("enum", [schema.get("const")])
        return max(len(json.dumps(v)) for v in values) + 1
    kind = schema.get("type")
    if isinstance(kind, list):
        return max(token_bound({**schema, "type": k}, defs, depth + 1) for k in kind)
    if kind == "string":
        return schema["maxLength"] + 3 if "maxLength" in schema else _UNBOUNDED
    if kind in ("integer", "number"):
        return 24
    if kind in ("boolean", "null"):
        return 2
    if kind == "array":
        if "maxItems" not in schema:
            return _UNBOUNDED
        return 2 + schema["maxItems"] * (token_bound(schema.get("items", {}), defs, depth + 1) + 1)
    if kind == "object" or "properties" in schema:
        props = schema.get("properties", {})
        total = 2 + sum(len(k) + 4 + token_bound(v, defs, depth + 1) for k, v in props.items())
        return min(total, _UNBOUNDED)
    return _UNBOUNDED


def attempt_budget(spec: "OutputSpec | None", max_tokens: int, repair: bool) -> int:
    """Tokens allowed for one attempt: the caller's budget, and for the repair attempt at least
    the tightened schema's bound, so that a bounded answer is never cut off."""
    if not repair or spec is None:
        return max_tokens
    bound = token_bound(spec.json_schema)
    return max(2 * max_tokens, min(bound + bound // 2 + 8, 4096))


@dataclass(frozen=True)
class OutputSpec:
    """What shape an answer must have: a schema, how to validate it, and whether it is a tool call."""

    json_schema: dict[str, Any]
    name: str = "output"
    model_type: Any = None  # a pydantic model class, when one was given
    tools: tuple[ToolSpec, ...] = ()
    tool_choice: str = "required"
    _validator: Any = field(default=None, compare=False, repr=False)

    @classmethod
    def build(cls, schema: Any = None, tools: Sequence[ToolSpec] | None = None,
              tool_choice: str = "required") -> "OutputSpec | None":
        if schema is not None and tools:
            raise SchemaError("give either an output schema or tools, not both", where="generate")
        if tools:
            tools = tuple(tools)
            js = tool_call_schema(tools, tool_choice)
            check_schema(js, where="tools")
            return cls(js, name="tool_call", tools=tools, tool_choice=tool_choice)
        if schema is None:
            return None
        if _is_pydantic_model(schema):
            try:
                js = schema.model_json_schema()
            except Exception as e:  # pydantic raises for types with no JSON form
                raise SchemaError(f"{schema.__name__} has no JSON schema: {e}",
                                  where=schema.__name__) from None
            return cls(js, name=schema.__name__, model_type=schema)
        if isinstance(schema, str):
            try:
                schema = json.loads(schema)
            except json.JSONDecodeError as e:
                raise SchemaError(f"schema is not JSON: {e}", where="schema") from None
        check_schema(schema)
        import jsonschema

        return cls(schema, name=str(schema.get("title") or "output"),
                   _validator=jsonschema.Draft202012Validator(schema))

    def tightened(self) -> "OutputSpec":
        return OutputSpec(tightened(self.json_schema), self.name, self.model_type, self.tools,
                          self.tool_choice, self._validator)

    @property
    def schema_text(self) -> str:
        return json.dumps(self.json_schema, separators=(",", ":"))

    def instruction(self) -> str:
        """What the model is told, so that it knows the field names the constraint will force."""
        if self.tools:
            lines = ["You can call these tools. Reply with a JSON object "
                     '{"name": <tool name>, "arguments": {...}}.']
            for t in self.tools:
                lines.append(f"- {t.name}: {t.description} Arguments schema: "
                             f"{json.dumps(t.parameters, separators=(',', ':'))}")
            if self.tool_choice == "auto":
                lines.append(f'- {RESPOND_TOOL}: answer the user directly. Arguments: '
                             '{"content": <your answer>}')
            return "\n".join(lines)
        return ("Reply with a JSON object that follows this JSON schema:\n" + self.schema_text)

    def with_instruction(self, messages: Sequence[Message]) -> list[Message]:
        """Prepend (or extend) the system message with the schema instruction."""
        msgs = list(messages)
        if msgs and msgs[0].role == "system":
            return [Message("system", msgs[0].content + "\n\n" + self.instruction())] + msgs[1:]
        return [Message("system", self.instruction())] + msgs

    def parse(self, text: str) -> tuple[Any, tuple[ToolCall, ...], str | None, list[str]]:
        """Validate `text`: (parsed object, tool calls, text answer, errors). Errors empty = valid."""
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            return None, (), None, [f"not valid JSON ({e.msg} at char {e.pos})"]
        if self.tools:
            import jsonschema

            errs = [_fmt_error(e) for e in jsonschema.Draft202012Validator(
                self.json_schema).iter_errors(data)]
            if errs:
                return None, (), None, errs
            if data["name"] == RESPOND_TOOL:
                return data, (), data["arguments"]["content"], []
            return data, (ToolCall(data["name"], data["arguments"], id="call_0"),), None, []
        if self.model_type is not None:
            from pydantic import ValidationError

            try:
                return self.model_type.model_validate(data), (), None, []
            except ValidationError as e:
                return None, (), None, [
                    f"{'.'.join(str(p) for p in err['loc']) or '(root)'}: {err['msg']}"
                    for err in e.errors()]
        errs = [_fmt_error(e) for e in self._validator.iter_errors(data)]
        return (data if not errs else None), (), None, errs


def _fmt_error(e: Any) -> str:
    path = "/".join(str(p) for p in e.absolute_path) or "(root)"
    return f"{path}: {e.message}"


Attempt = Callable[["OutputSpec | None", bool], Awaitable[Response]]


async def generate_validated(attempt: Attempt, spec: OutputSpec | None,
                             where: str = "model") -> Response:
    """Run `attempt(spec, repair=False)`; on an invalid answer, one repair attempt; else raise.

    `attempt` is the backend's own constrained generation. The returned `Response` carries the
    parsed object (or tool calls), and `repaired=True` when the second attempt was needed.
    """
    from dataclasses import replace

    response = await attempt(spec, False)
    if spec is None:
        return response
    parsed, calls, answer, errors = spec.parse(response.text)
    if not errors:
        return replace(response, parsed=parsed, tool_calls=calls,
                       text=answer if answer is not None else response.text)
    second = await attempt(spec.tightened(), True)
    parsed, calls, answer, errors2 = spec.parse(second.text)
    if not errors2:
        return replace(second, parsed=parsed, tool_calls=calls, repaired=True,
                       text=answer if answer is not None else second.text,
                       usage=response.usage + second.usage,
                       latency_s=response.latency_s + second.latency_s)
    raise StructuredOutputError(
        f"output does not validate against {spec.name} after one repair step: "
        + "; ".join(errors2[:5]),
        where=where, text=second.text, errors=errors2, first_errors=errors)



def validate_streamed(spec: OutputSpec | None, response: Response,
                      where: str = "model") -> Response:
    """The end of a streamed structured answer: the `Response` with its parsed object (or tool
    calls), or `StructuredOutputError` as `generate_validated` raises after its repair step (a
    stream has no repair step: its text was already sent)."""
    from dataclasses import replace

    if spec is None:
        return response
    parsed, calls, answer, errors = spec.parse(response.text)
    if errors:
        raise StructuredOutputError(
            f"streamed output does not validate against {spec.name}: " + "; ".join(errors[:5]),
            where=where, text=response.text, errors=errors, first_errors=errors)
    return replace(response, parsed=parsed, tool_calls=calls,
                   text=answer if answer is not None else response.text)
