"""One exception tree for everything slmflow raises on purpose.

Why one tree: a user of a multi-agent workflow has to tell *where* something went wrong (the
configuration, the model, the server, the structure of an output, a handoff) without reading a
traceback from deep inside llama.cpp or httpx. Every backend translates its own failures into one
of these classes, and every message names the thing and the place (model name, file, URL, field).

    SlmflowError
    ├── ConfigError                  bad configuration: a file, a YAML spec, a setting
    │   └── SchemaError              a JSON schema that is not valid or cannot be compiled
    ├── ModelError                   anything about a model
    │   ├── ModelNotFoundError       unknown catalog name, missing weights file
    │   ├── ModelLoadError           the file exists but the backend cannot load it
    │   ├── BackendUnavailableError  the backend's optional package is not installed
    │   ├── ContextLengthError       the prompt does not fit the context window
    │   └── GenerationError          the backend failed while generating
    ├── ServerError                  an OpenAI-compatible server
    │   ├── ServerUnreachableError   connection refused, DNS, timeout
    │   └── ServerResponseError      an HTTP error status, or a body that is not what the API says
    ├── StructuredOutputError        output still invalid against its schema after the repair step
    ├── ToolError                    a tool raised, timed out or got invalid arguments
    ├── HandoffError                 a step's output does not fit the next step's input
    └── StorageError                 a database cannot be opened, migrated, read or written:
        ├── StoreError               the call log (`slmflow.store`)
        ├── TraceStoreError          the span store (`slmflow.tracing.store`)
        └── RegistryStoreError       the adapter registry (`slmflow.finetune.registry_store`)

Each carries ``where`` (what was being done with what) so that logs and CLI can print it alone.
Areas add their own subclasses beside their code: `ReviewError`, `CheckpointError`,
`RetrievalError`, `LoopError`; the three stores' errors live beside their stores and share one
parent, `StorageError` (``except StorageError`` catches a database failure whichever store it
came from; `slmflow.storage` raises it). A ``where`` that is a database URL goes through
`mask_url`.
"""

from __future__ import annotations

import re
from typing import Any


def mask_url(url: Any) -> str:
    """``postgresql://user:secret@host/db`` → ``postgresql://user:***@host/db`` (for messages)."""
    return re.sub(r"(://[^:/@]*):[^@]*@", r"\1:***@", str(url))


class SlmflowError(Exception):
    """Base class of every error slmflow raises on purpose."""

    def __init__(self, message: str, *, where: str | None = None, **details: Any) -> None:
        self.message = message
        self.where = where
        self.details = details
        super().__init__(f"{message} [{where}]" if where else message)


class ConfigError(SlmflowError):
    """A configuration value, file or declarative spec is wrong."""


class SchemaError(ConfigError):
    """A JSON schema is not valid, or cannot be turned into a decoding constraint."""


class ModelError(SlmflowError):
    """Something about a model: finding, loading or running it."""


class ModelNotFoundError(ModelError):
    """A catalog name is unknown or a weights file is missing."""


class ModelLoadError(ModelError):
    """A weights file exists but the backend could not load it."""


class BackendUnavailableError(ModelError):
    """The optional package a backend needs is not installed."""


class ContextLengthError(ModelError):
    """The prompt (plus the room asked for the answer) does not fit the model's context window."""


class GenerationError(ModelError):
    """The backend failed while generating."""


class ServerError(SlmflowError):
    """An OpenAI-compatible server failed."""


class ServerUnreachableError(ServerError):
    """The server could not be reached (refused, timed out, name not resolved)."""


class ServerResponseError(ServerError):
    """The server answered with an error status or a body that does not follow the API."""

    def __init__(self, message: str, *, where: str | None = None, status: int | None = None,
                 body: str | None = None, **details: Any) -> None:
        super().__init__(message, where=where, status=status, body=body, **details)
        self.status = status
        self.body = body


class StructuredOutputError(SlmflowError):
    """A model's output is not valid against the requested schema, even after one repair step."""

    def __init__(self, message: str, *, where: str | None = None, text: str = "",
                 errors: list[str] | None = None, **details: Any) -> None:
        super().__init__(message, where=where, text=text, errors=errors or [], **details)
        self.text = text
        self.errors = errors or []


class ToolError(SlmflowError):
    """A tool call failed: invalid arguments, an exception in the tool, or a timeout."""


class HandoffError(SlmflowError):
    """A step's output does not validate against the next step's input type."""


class StorageError(SlmflowError):
    """A database failed: cannot be opened, connected to, migrated, read or written. The call
    log's `StoreError`, the span store's `TraceStoreError` and the adapter registry's
    `RegistryStoreError` are its subclasses."""
