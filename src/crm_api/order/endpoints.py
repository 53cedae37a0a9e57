from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Request, Response

from crm_api.authz.dependencies import access_for, get_policy, optional, require
from crm_api.authz.types import Access, Action
from crm_api.customer.service import upsert_access
from crm_api.db.session import ReadConnection, WriteSession
from crm_api.kit.concurrency import IfMatch, RequireIfMatch
from crm_api.kit.idempotency import Claim, IdempotencyKeyHeader, idempotent, idempotent_folded
from crm_api.kit.responses import json_response, with_etag
from crm_api.kit.routing import ETAG_HEADER, StrictRoute, problems, query_model
from crm_api.kit.schemas import Page
from crm_api.order import service
from crm_api.order.schemas import (
    CustomerOrderListQuery,
    Order,
    OrderCreate,
    OrderListQuery,
    OrderUpdate,
)
from crm_api.order.states import OrderAction
from crm_api.system_settings import CurrentSystemSettings, SystemSettings

router = APIRouter(prefix="/orders", tags=["orders"], route_class=StrictRoute)
customer_router = APIRouter(prefix="/customers", tags=["orders"], route_class=StrictRoute)

R = "orders"
OrdersRead = Annotated[Access, require(R, Action.read)]
OrdersCreate = Annotated[Access, require(R, Action.create)]
OrdersUpdate = Annotated[Access, require(R, Action.update)]
OrdersDelete = Annotated[Access, require(R, Action.delete)]
OrdersPurge = Annotated[Access, require(R, Action.purge)]
OrdersAssign = Annotated[Access | None, optional(R, Action.assign)]


def _rules(settings: SystemSettings) -> service.Rules:
    return service.Rules(
        places=settings.amount_decimal_places,
        number_prefix=settings.order_number_prefix,
        default_currency=settings.default_currency,
    )


@router.get(
    "",
    operation_id="orders_list",
    summary="List orders",
    response_model=Page[Order],
    responses=problems(400),
)
async def list_orders(
    request: Request,
    access: OrdersRead,
    conn: ReadConnection,
    query: Annotated[OrderListQuery, query_model(OrderListQuery)],
) -> Response:
    """Orders in your data scope, with their lines, filtered and sorted, one cursor page
    at a time. "My orders" is `owner_id=<your id>` (or simply your list, with an `own`
    scope). `q` matches the number, the external_ref and the name of the order's customer
    when you may read that customer (live and inside your customers scope): a search never
    reveals the name of a customer you cannot read."""
    customers = access_for(get_policy(request), access.principal, "customers", Action.read)
    return json_response(await service.list_orders(conn, access, query, customers))


@router.post(
    "",
    operation_id="orders_create",
    summary="Place an order",
    status_code=201,
    response_model=Order,
    responses={**problems(409), 201: {"headers": ETAG_HEADER}},
)
async def create_order(
    request: Request,
    body: OrderCreate,
    access: OrdersCreate,
    assign: OrdersAssign,
    session: WriteSession,
    settings: CurrentSystemSettings,
    idempotency_key: IdempotencyKeyHeader = None,
) -> Response:
    """A pending order of the lines sent. The server computes every amount (in decimal,
    rounded half-up to the system's `amount_decimal_places`) and the number; sending a
    total, a number or a status is a 422. Send `Idempotency-Key` to make retries safe: a
    retry gets the first response, never a second order.

    Bad input is a 422 naming the field, and writes nothing: an unknown or inactive
    product (`invalid_product`, `inactive_product`), a product priced in another currency
    (`mixed_currencies`), a quantity ≤ 0 or a discount above its line's amount
    (`invalid_line` / `validation_error`), a customer outside your scope
    (`invalid_customer`), more than 100 lines. An `external_ref` you already used is a 409
    `order_duplicate` naming your existing order."""

    policy = get_policy(request)
    rights = service.CustomerRights(
        read=access_for(policy, access.principal, "customers", Action.read),
        upsert=upsert_access(policy, access.principal) if body.customer is not None else None,
    )

    async def produce(claim: Claim | None) -> Response:
        row = await service.create_order(
            session, access, assign, rights, body, _rules(settings), claim
        )
        return with_etag(row, 201, f"/v1/orders/{row['id']}")

    return await idempotent_folded(
        request, session, access.principal, idempotency_key, body, produce
    )


@router.get(
    "/{order_id}",
    operation_id="orders_get",
    summary="Get an order",
    response_model=Order,
    responses={**problems(404), 200: {"headers": ETAG_HEADER}},
)
async def get_order(order_id: uuid.UUID, access: OrdersRead, conn: ReadConnection) -> Response:
    return with_etag(await service.get_order(conn, access, order_id))


@router.patch(
    "/{order_id}",
    operation_id="orders_update",
    summary="Update an order",
    response_model=Order,
    responses=problems(404, 409, 412, 428),
)
async def update_order(
    order_id: uuid.UUID,
    body: OrderUpdate,
    access: OrdersUpdate,
    assign: OrdersAssign,
    session: WriteSession,
    settings: CurrentSystemSettings,
    strict: RequireIfMatch,
    if_match: IfMatch = None,
) -> Response:
    """Change the fields sent. `lines` replaces every line and recomputes the totals, only
    while the order is pending (409 `order_not_editable` after). With `If-Match`, a stale
    version is a 412."""
    row = await service.update_order(
        session,
        access,
        assign,
        order_id,
        body,
        _rules(settings),
        if_match,
        require_if_match=strict,
    )
    return with_etag(row)


@router.delete(
    "/{order_id}",
    operation_id="orders_delete",
    summary="Delete an order (restorable)",
    status_code=204,
    responses=problems(404, 409, 412, 428),
)
async def delete_order(
    order_id: uuid.UUID,
    access: OrdersDelete,
    session: WriteSession,
    strict: RequireIfMatch,
    if_match: IfMatch = None,
) -> Response:
    """Only a pending or cancelled order (409 `order_not_deletable`: cancel it first)."""
    await service.delete_order(session, access, order_id, if_match, require_if_match=strict)
    return Response(status_code=204)


@router.post(
    "/{order_id}/restore",
    operation_id="orders_restore",
    summary="Restore a deleted order",
    response_model=Order,
    responses=problems(404),
)
async def restore_order(
    request: Request,
    order_id: uuid.UUID,
    access: OrdersDelete,
    session: WriteSession,
    idempotency_key: IdempotencyKeyHeader = None,
) -> Response:
    async def produce() -> Response:
        return with_etag(await service.restore_order(session, access, order_id))

    return await idempotent(request, session, access.principal, idempotency_key, None, produce)


@router.post(
    "/{order_id}/purge",
    operation_id="orders_purge",
    summary="Remove a deleted order for good",
    status_code=204,
    responses=problems(404),
)
async def purge_order(order_id: uuid.UUID, access: OrdersPurge, session: WriteSession) -> Response:
    """Admin only. The order must be deleted first; its lines go with it."""
    await service.purge_order(session, access, order_id)
    return Response(status_code=204)


# --- status actions ----------------------------------------------------------------------------
def _action_route(action: OrderAction, summary: str, doc: str) -> None:
    async def act(
        request: Request,
        order_id: uuid.UUID,
        access: OrdersUpdate,
        session: WriteSession,
        strict: RequireIfMatch,
        if_match: IfMatch = None,
        idempotency_key: IdempotencyKeyHeader = None,
    ) -> Response:
        async def produce() -> Response:
            row = await service.act(
                session, access, order_id, action, if_match, require_if_match=strict
            )
            return with_etag(row)

        return await idempotent(request, session, access.principal, idempotency_key, None, produce)

    act.__name__ = f"{action.value}_order"
    act.__doc__ = doc + (
        " An illegal move is a 409 `order_invalid_transition` naming the current `status`."
        " With `If-Match`, a stale version is a 412. Audited as `"
        + action.value
        + "` with its time."
    )
    router.add_api_route(
        f"/{{order_id}}/{action.value}",
        act,
        methods=["POST"],
        operation_id=f"orders_{action.value}",
        summary=summary,
        response_model=Order,
        responses={**problems(404, 409, 412, 428), 200: {"headers": ETAG_HEADER}},
    )


_action_route(OrderAction.confirm, "Confirm an order", "pending → confirmed.")
_action_route(OrderAction.ship, "Mark an order shipped", "confirmed → shipped.")
_action_route(OrderAction.deliver, "Mark an order delivered", "shipped → delivered.")
_action_route(OrderAction.complete, "Complete an order", "delivered → completed.")
_action_route(OrderAction.cancel, "Cancel an order", "pending or confirmed → cancelled.")


@customer_router.get(
    "/{customer_id}/orders",
    operation_id="customers_orders_list",
    summary="List a customer's orders",
    response_model=Page[Order],
    responses=problems(400, 404),
)
async def list_customer_orders(
    request: Request,
    customer_id: uuid.UUID,
    access: OrdersRead,
    conn: ReadConnection,
    query: Annotated[CustomerOrderListQuery, query_model(CustomerOrderListQuery)],
) -> Response:
    """The customer's orders in your orders scope. 404 `customer_not_found` when the
    customer is missing, deleted or outside your customers scope; an empty page means no
    (matching) orders."""
    customers = access_for(get_policy(request), access.principal, "customers", Action.read)
    return json_response(
        await service.list_customer_orders(conn, access, customers, customer_id, query)
    )
