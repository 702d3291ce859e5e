"""Outbound calls: Meta's call-permission rules, enforced by the gateway before Meta refuses.

A business may call a WhatsApp user only with the user's permission, and both the permission
requests and the calls are rate-limited per (business number, user) pair (docs/meta-calling.md
§3, §5, §6, §10, §11). One module per job:

- :mod:`.rules`: the limits, :class:`Decision` and :class:`RefusalReason`, pure functions of a
  pair's state and the time;
- :mod:`.storage`: the :class:`LedgerStore` interface the ledger keeps its facts behind, and
  :mod:`.sqlite_store` its SQLite implementation;
- :mod:`.reconcile`: Meta's ``call_permissions`` answer, and what it changes;
- :mod:`.ledger`: :class:`PermissionLedger` (the rules applied to the stored facts) and
  :func:`open_ledger`, the one way the gateway and the CLI open it;
- :mod:`.service`: asking and calling -- what the API, the CLI and the dialplan's calls use.
"""

from gateway.calls.permissions.ledger import (
    PermissionLedger,
    display_numbers_from_config,
    open_ledger,
)
from gateway.calls.permissions.reconcile import MetaAnswer, MetaChanges
from gateway.calls.permissions.rules import (
    CALL_LIMIT,
    COUNTRY_UNSUPPORTED,
    DAY,
    HOUR,
    NO_PERMISSION,
    OK,
    PERMANENT_EXISTS,
    REQUEST_LIMIT,
    SANDBOX_LIMITS,
    WEEK,
    Decision,
    Limits,
    PairState,
    PermissionChange,
    RefusalReason,
    business_country_block,
    next_allowed_at,
    period_seconds,
)
from gateway.calls.permissions.service import (
    META_REFRESH_S,
    PermissionService,
    decide_call,
    request_permission,
    send_call_button,
)
from gateway.calls.permissions.sqlite_store import SqliteLedgerStore
from gateway.calls.permissions.storage import LedgerClosed, LedgerStore, User

__all__ = [
    "CALL_LIMIT", "COUNTRY_UNSUPPORTED", "DAY", "HOUR", "META_REFRESH_S", "NO_PERMISSION", "OK",
    "PERMANENT_EXISTS", "REQUEST_LIMIT", "SANDBOX_LIMITS", "WEEK", "Decision", "LedgerClosed",
    "LedgerStore", "Limits", "MetaAnswer", "MetaChanges", "PairState", "PermissionChange",
    "PermissionLedger", "PermissionService", "RefusalReason", "SqliteLedgerStore", "User",
    "business_country_block", "decide_call", "display_numbers_from_config", "next_allowed_at",
    "open_ledger", "period_seconds", "request_permission", "send_call_button",
]
