"""Lookup tools over the example's small records file (stand-ins for an order / CRM API)."""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Any

from slmflow.tools import tool

_DATA = Path(__file__).parent / "data" / "records.json"


@lru_cache(maxsize=1)
def _records() -> dict[str, Any]:
    return json.loads(_DATA.read_text())


@tool(timeout_s=2.0)
def lookup_order(order_id: str) -> dict[str, Any]:
    """Look up an order's status.

    Args:
        order_id: the order id, such as A-1042
    """
    order = _records()["orders"].get(order_id.strip().upper())
    if order is None:
        raise LookupError(f"no order {order_id!r}")
    return {"order_id": order_id, **order}


@tool(timeout_s=2.0)
def lookup_account(account_id: str) -> dict[str, Any]:
    """Look up a customer account.

    Args:
        account_id: the numeric account id, such as 88231
    """
    account = _records()["accounts"].get(account_id.strip())
    if account is None:
        raise LookupError(f"no account {account_id!r}")
    return {"account_id": account_id, **account}
