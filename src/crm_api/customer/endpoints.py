from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Path, Request, Response

from crm_api.authz.dependencies import get_policy, optional, public, require
from crm_api.authz.types import Access, Action
from crm_api.customer import service
from crm_api.customer.schemas import (
    Customer,
    CustomerCreate,
    CustomerListQuery,
    CustomerPut,
    CustomerTransfer,
    CustomerTransferOne,
    CustomerUpdate,
    ExternalRef,
    TransferResult,
)
from crm_api.db.session import ReadConnection, WriteSession
from crm_api.kit.concurrency import IfMatch, RequireIfMatch
from crm_api.kit.idempotency import Claim, IdempotencyKeyHeader, idempotent, idempotent_folded
from crm_api.kit.responses import json_response, with_etag
from crm_api.kit.routing import ETAG_HEADER, StrictRoute, problems, query_model, reserve_path
from crm_api.kit.schemas import Page

router = APIRouter(prefix="/customers", tags=["customers"], route_class=StrictRoute)

R = "customers"
CustomersRead = Annotated[Access, require(R, Action.read)]
CustomersCreate = Annotated[Access, require(R, Action.create)]
CustomersUpdate = Annotated[Access, require(R, Action.update)]
CustomersDelete = Annotated[Access, require(R, Action.delete)]
CustomersPurge = Annotated[Access, require(R, Action.purge)]
CustomersAssign = Annotated[Access | None, optional(R, Action.assign)]


# Before the /{customer_id} routes, which would take "transfer" for an id (422).
reserve_path(router, "/transfer", "POST", dependencies=[public()])


@router.get(
    "",
    operation_id="customers_list",
    summary="List customers",
    response_model=Page[Customer],
    responses=problems(400),
)
async def list_customers(
    access: CustomersRead,
    conn: ReadConnection,
    query: Annotated[CustomerListQuery, query_model(CustomerListQuery)],
) -> Response:
    """Customers in your data scope, filtered and sorted, one cursor page at a time."""
    return json_response(await service.list_customers(conn, access, query))


@router.post(
    "",
    operation_id="customers_create",
    summary="Create a customer",
    status_code=201,
    response_model=Customer,
    responses={**problems(409), 201: {"headers": ETAG_HEADER}},
)
async def create_customer(
    request: Request,
    body: CustomerCreate,
    access: CustomersCreate,
    assign: CustomersAssign,
    session: WriteSession,
    idempotency_key: IdempotencyKeyHeader = None,
) -> Response:
    """Create a customer. Send `Idempotency-Key` to make retries safe. A duplicate
    `external_ref`, or a live customer's `tax_number`, `email` or `phone`, is a 409
    naming the existing customer."""

    async def produce(claim: Claim | None) -> Response:
        row = await service.create_customer(session, access, assign, body, claim)
        return with_etag(row, 201, f"/v1/customers/{row['id']}")

    return await idempotent_folded(
        request, session, access.principal, idempotency_key, body, produce
    )


@router.get(
    "/{customer_id}",
    operation_id="customers_get",
    summary="Get a customer",
    response_model=Customer,
    responses={**problems(404), 200: {"headers": ETAG_HEADER}},
)
async def get_customer(
    customer_id: uuid.UUID, access: CustomersRead, conn: ReadConnection
) -> Response:
    return with_etag(await service.get_customer(conn, access, customer_id))


@router.patch(
    "/{customer_id}",
    operation_id="customers_update",
    summary="Update a customer",
    response_model=Customer,
    responses=problems(404, 409, 412, 428),
)
async def update_customer(
    customer_id: uuid.UUID,
    body: CustomerUpdate,
    access: CustomersUpdate,
    assign: CustomersAssign,
    session: WriteSession,
    strict: RequireIfMatch,
    if_match: IfMatch = None,
) -> Response:
    """Change the fields sent. With `If-Match`, a stale version is a 412."""
    row = await service.update_customer(
        session,
        access,
        assign,
        customer_id,
        body,
        if_match,
        require_if_match=strict,
    )
    return with_etag(row)


@router.delete(
    "/{customer_id}",
    operation_id="customers_delete",
    summary="Delete a customer (restorable)",
    status_code=204,
    responses=problems(404, 412, 428),
)
async def delete_customer(
    customer_id: uuid.UUID,
    access: CustomersDelete,
    session: WriteSession,
    strict: RequireIfMatch,
    if_match: IfMatch = None,
) -> Response:
    await service.delete_customer(session, access, customer_id, if_match, require_if_match=strict)
    return Response(status_code=204)


@router.post(
    "/{customer_id}/restore",
    operation_id="customers_restore",
    summary="Restore a deleted customer",
    response_model=Customer,
    responses=problems(404, 409),
)
async def restore_customer(
    customer_id: uuid.UUID, access: CustomersDelete, session: WriteSession
) -> Response:
    return with_etag(await service.restore_customer(session, access, customer_id))


@router.post(
    "/{customer_id}/purge",
    operation_id="customers_purge",
    summary="Remove a deleted customer for good",
    status_code=204,
    responses=problems(404, 409),
)
async def purge_customer(
    customer_id: uuid.UUID, access: CustomersPurge, session: WriteSession
) -> Response:
    """Admin only. The customer must be deleted first; its contacts go with it. A customer
    with orders is kept (409 `customer_has_orders`): orders are the books."""
    await service.purge_customer(session, access, customer_id)
    return Response(status_code=204)


# --- transfer ------------------------------------------------------------------------------
CustomersTransfer = Annotated[Access, require(R, Action.assign)]


@router.post(
    "/transfer",
    operation_id="customers_transfer",
    summary="Hand a user's customers to another user",
    response_model=TransferResult,
    responses=problems(),
)
async def transfer_customers(
    body: CustomerTransfer, access: CustomersTransfer, session: WriteSession
) -> Response:
    """What happens when a rep leaves: `from_user_id`'s customers (all, or `customer_ids`)
    get `to_user_id` as owner and their org unit. Needs `customers:assign`; only customers
    inside your assign scope move, and `to_user_id` must be inside it too. One audit event
    per customer. Safe to repeat: customers already moved are not moved again."""
    return json_response(await service.transfer_customers(session, access, body))


@router.post(
    "/{customer_id}/transfer",
    operation_id="customers_transfer_one",
    summary="Hand a customer to another user",
    response_model=Customer,
    responses=problems(404, 412, 428),
)
async def transfer_customer(
    customer_id: uuid.UUID,
    body: CustomerTransferOne,
    access: CustomersTransfer,
    session: WriteSession,
    strict: RequireIfMatch,
    if_match: IfMatch = None,
) -> Response:
    """Owner and org unit become `to_user_id`'s. Needs `customers:assign` over the customer.
    With `If-Match`, a stale version is a 412 (428 without it where the server requires it,
    as for PATCH and DELETE)."""
    return with_etag(
        await service.transfer_customer(
            session, access, customer_id, body, if_match, require_if_match=strict
        )
    )


# --- upsert by external_ref ----------------------------------------------------------------
@router.put(
    "/by-external-ref/{external_ref}",
    operation_id="customers_upsert_by_external_ref",
    summary="Create or update a customer by its external_ref",
    response_model=Customer,
    responses={
        **problems(409, 412, 428),
        200: {"description": "The customer existed and was updated.", "headers": ETAG_HEADER},
        201: {
            "model": Customer,
            "description": "The customer was created.",
            "headers": {
                **ETAG_HEADER,
                "Location": {
                    "description": "The new customer's URL.",
                    "schema": {"type": "string"},
                },
            },
        },
    },
)
async def upsert_customer_by_external_ref(
    request: Request,
    external_ref: Annotated[ExternalRef, Path(description="Your system's id for the customer.")],
    body: CustomerPut,
    access: CustomersCreate,
    session: WriteSession,
    strict: RequireIfMatch,
    if_match: IfMatch = None,
    idempotency_key: IdempotencyKeyHeader = None,
) -> Response:
    """For catalogue and CRM syncs: the customer whose `external_ref` is in the path is
    created (201, with `Location`) or updated with the fields sent (200; fields left out
    are kept). Concurrent calls for one new `external_ref` create exactly one customer.
    With `If-Match`, a stale version is a 412 (on a new `external_ref` any `If-Match` is:
    there is nothing to match). The call needs `customers:create` (it may create);
    updating also needs `customers:update` over the customer; one
    outside that scope (or in the trash) is a 409 `customer_duplicate`, naming it only to
    a caller who may see it, as `POST /v1/customers` does for a taken `external_ref`.
    Send `Idempotency-Key` to replay a retry's first answer."""
    rights = service.upsert_access(get_policy(request), access.principal)

    async def produce() -> Response:
        done = await service.upsert_customer_by_natural_key(
            session,
            rights,
            body,
            external_ref=external_ref,
            if_match=if_match,
            require_if_match=strict,
        )
        if done.created:
            return with_etag(done.customer, 201, f"/v1/customers/{done.id}")
        return with_etag(done.customer)

    return await idempotent(request, session, access.principal, idempotency_key, body, produce)
