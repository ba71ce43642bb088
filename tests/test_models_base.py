"""The helpers in models/base.py that every backend shares: a missing backend package names the
extra that installs it, the generate preamble, the schema-hinted messages."""

from __future__ import annotations

import sys

import pytest
from pydantic import BaseModel

from slmflow.errors import BackendUnavailableError, SchemaError
from slmflow.models.base import call_parts, import_backend, sent_messages
from slmflow.types import Message, Settings, ToolSpec


class Out(BaseModel):
    answer: str


@pytest.mark.parametrize("module,attr,needs,message", [
    ("slmflow.models.llamacpp", "_import_llama_cpp", "llama_cpp",
     "llama-cpp-python is not installed (.*); pip install 'slmflow\\[llamacpp\\]'"),
    ("slmflow.models.transformers", "_imports", "transformers",
     "transformers/torch are not installed (.*); pip install 'slmflow\\[transformers\\]'"),
])
def test_a_missing_backend_package_names_the_extra(monkeypatch, module, attr, needs, message):
    import importlib

    load = getattr(importlib.import_module(module), attr)
    monkeypatch.setitem(sys.modules, needs, None)  # `import needs` raises ImportError
    with pytest.raises(BackendUnavailableError, match=message) as e:
        load()
    assert e.value.where == module.rsplit(".", 1)[1]


def test_import_backend_returns_the_modules_in_order():
    import json
    import os

    assert import_backend("x", "x", "json", "os") == [json, os]


def test_call_parts_defaults_and_order_of_errors():
    settings, spec, msgs = call_parts("hi", None, None, None)
    assert settings == Settings() and spec is None and msgs == [Message("user", "hi")]
    s = Settings(max_tokens=3)
    assert call_parts([{"role": "user", "content": "x"}], Out, None, s)[0] is s
    assert call_parts("x", Out, None, s)[1].name == "Out"
    tool = ToolSpec("lookup", "find a thing", {"type": "object", "properties": {}})
    with pytest.raises(SchemaError, match="either an output schema or tools"):
        call_parts([{"role": "nobody"}], Out, [tool], None)  # the schema is checked first


def test_sent_messages_adds_the_schema_instruction_only_when_hinted():
    _, spec, msgs = call_parts([Message("system", "Be brief."), Message("user", "q")], Out,
                               None, None)
    hinted = sent_messages(msgs, spec, Settings())
    assert hinted[0].role == "system" and hinted[0].content.startswith("Be brief.\n\n")
    assert len(hinted[0].content) > len("Be brief.") + 10 and hinted[1:] == msgs[1:]
    assert sent_messages(msgs, spec, Settings(schema_hint=False)) is msgs
    assert sent_messages(msgs, None, Settings()) is msgs
