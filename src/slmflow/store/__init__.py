"""The storage interface: the call log (calls, feedback, escalation examples, API key hashes) on
embedded SQLite by default and PostgreSQL at scale, one schema, migrations applied on open.

    from slmflow.store import open_call_log
    log = open_call_log()                      # sqlite:///$SLMFLOW_HOME/calls.db
    log = open_call_log("postgresql://u@127.0.0.1:5432/slmflow")
    log.append([CallRecord(...)]); log.query(agent="router", since="24h")
    log.add_feedback(call_id, signal="down", label="wrong_category", correction={...})

Agent calls reach it through the core's events (`slmflow.hooks`), not through the agent:
``slmflow.enable_logging()`` (the CLI and the gateway call it) logs every call of the process;
see `writer` for who else asks.

Where things are: `records` (the dataclasses), `calllog` (the interface and its two backends),
`keys` (API keys, per-key limits), `schema` (migrations), `batch_writer` (the background
writer), `writer` (the process-wide writer, call records, the listener), `review`, `judges`; what
the call log shares with the span store and the adapter registry (URLs, connections, dialect,
`StorageError`) is `slmflow.storage`'s.
"""

from __future__ import annotations

from .calllog import (AgentInfo, ApiKey, CallLog, CallRecord, Example, Feedback, PostgresCallLog,
                      SQLiteCallLog, StoreError, default_url, open_call_log, parse_since)
from .writer import (CallLogging, CallLogWriter, LogContext, calllog_enabled, disable_logging,
                     enable_logging, get_writer, log_agent_call, logging_context, logging_enabled,
                     record_agent_result, set_writer)

__all__ = ["AgentInfo", "ApiKey", "CallLog", "CallLogging", "CallLogWriter", "CallRecord",
           "Example", "Feedback", "LogContext", "PostgresCallLog", "SQLiteCallLog", "StoreError",
           "calllog_enabled", "default_url", "disable_logging", "enable_logging", "get_writer",
           "log_agent_call", "logging_context", "logging_enabled", "open_call_log", "parse_since",
           "record_agent_result", "set_writer"]
