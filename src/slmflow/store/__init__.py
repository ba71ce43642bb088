"""The storage interface: the call log (calls, feedback, escalation examples, API key hashes) on
embedded SQLite by default and PostgreSQL at scale, one schema, migrations applied on open.

    from slmflow.store import open_call_log
    log = open_call_log()                      # sqlite:///$SLMFLOW_HOME/calls.db
    log = open_call_log("postgresql://u@127.0.0.1:5432/slmflow")
    log.append([CallRecord(...)]); log.query(agent="router", since="24h")
    log.add_feedback(call_id, signal="down", label="wrong_category", correction={...})
"""

from __future__ import annotations

from .calllog import (AgentInfo, ApiKey, CallLog, CallRecord, Example, Feedback, PostgresCallLog,
                      SQLiteCallLog, StoreError, default_url, open_call_log, parse_since)
from .writer import (CallLogging, CallLogWriter, LogContext, calllog_enabled, get_writer,
                     log_agent_call, logging_context, record_agent_result, set_writer)

__all__ = ["AgentInfo", "ApiKey", "CallLog", "CallLogging", "CallLogWriter", "CallRecord",
           "Example", "Feedback", "LogContext", "PostgresCallLog", "SQLiteCallLog", "StoreError",
           "calllog_enabled", "default_url", "get_writer", "log_agent_call", "logging_context",
           "open_call_log", "parse_since", "record_agent_result", "set_writer"]
