"""The order state machine: the only place that says which status may follow which.

``pending → confirmed → shipped → delivered → completed``; ``cancel`` from ``pending`` or
``confirmed``. ``completed`` and ``cancelled`` are final. Each action stamps its own time
column (``confirmed_at`` …), so the history is on the order as well as in the audit trail.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class OrderStatus(StrEnum):
    pending = "pending"
    confirmed = "confirmed"
    shipped = "shipped"
    delivered = "delivered"
    completed = "completed"
    cancelled = "cancelled"


class OrderAction(StrEnum):
    confirm = "confirm"
    ship = "ship"
    deliver = "deliver"
    complete = "complete"
    cancel = "cancel"


@dataclass(frozen=True, slots=True)
class Transition:
    action: OrderAction
    sources: frozenset[OrderStatus]
    target: OrderStatus
    #: The column stamped with the transition's time.
    stamp: str


S = OrderStatus
TRANSITIONS: dict[OrderAction, Transition] = {
    t.action: t
    for t in (
        Transition(OrderAction.confirm, frozenset({S.pending}), S.confirmed, "confirmed_at"),
        Transition(OrderAction.ship, frozenset({S.confirmed}), S.shipped, "shipped_at"),
        Transition(OrderAction.deliver, frozenset({S.shipped}), S.delivered, "delivered_at"),
        Transition(OrderAction.complete, frozenset({S.delivered}), S.completed, "completed_at"),
        Transition(
            OrderAction.cancel, frozenset({S.pending, S.confirmed}), S.cancelled, "cancelled_at"
        ),
    )
}

#: Statuses whose lines (and currency) may still change.
EDITABLE = frozenset({S.pending})
#: Statuses an order may be deleted (moved to the trash) in: nothing shipped, nothing owed.
DELETABLE = frozenset({S.pending, S.cancelled})
#: Every status a transition can start from, per action (for the docs and tests).
FINAL = frozenset(s for s in S if not any(s in t.sources for t in TRANSITIONS.values()))


def transition(action: OrderAction, current: OrderStatus) -> Transition | None:
    """The transition ``action`` makes from ``current``; ``None`` when it is illegal."""
    t = TRANSITIONS[action]
    return t if current in t.sources else None
