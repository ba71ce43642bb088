"""Lookup tools over the example's small records file (stand-ins for an order / CRM API).

A ticket that gives no id of the kind its category looks up (``How do I change the email on my
account?``) is the normal case, not a failed call: the tool returns None (no record) and the step
is ``ok``. An id the records do not know raises, and the workflow's ``on_error: continue`` records
the step as ``error_continued`` with the reason; the reasoner reads no record either way."""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Any, Optional

from slmflow.tools import tool

_DATA = Path(__file__).parent / "data" / "records.json"


@lru_cache(maxsize=1)
def _records() -> dict[str, Any]:
    return json.loads(_DATA.read_text())


@tool(timeout_s=2.0)
def lookup_order(order_id: Optional[str]) -> Optional[dict[str, Any]]:
    """Look up an order's status.

    Args:
        order_id: the order id, such as A-1042 (null when the ticket gives none: no record)
    """
    if order_id is None:
        return None
    order = _records()["orders"].get(order_id.strip().upper())
    if order is None:
        raise LookupError(f"no order {order_id!r}")
    return {"order_id": order_id, **order}


@tool(timeout_s=2.0)
def lookup_account(account_id: Optional[str]) -> Optional[dict[str, Any]]:
    """Look up a customer account.

    Args:
        account_id: the numeric account id, such as 88231 (null when the ticket gives none)
    """
    if account_id is None:
        return None
    account = _records()["accounts"].get(account_id.strip())
    if account is None:
        raise LookupError(f"no account {account_id!r}")
    return {"account_id": account_id, **account}
