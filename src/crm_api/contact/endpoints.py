"""Contacts: ``/v1/contacts`` and, for one customer, ``/v1/customers/{id}/contacts``.

Both routers guard with the ``contacts`` resource: what the caller may do to a customer's
contacts is a grant on contacts, and which customers' contacts they reach is that grant's
scope applied to the customer.
"""

from __future__ import annotations

import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Request, Response

from crm_api.authz.dependencies import require
from crm_api.authz.types import Access, Action
from crm_api.contact import service
from crm_api.contact.schemas import (
    Contact,
    ContactCreate,
    ContactListQuery,
    ContactUpdate,
    CustomerContactCreate,
    CustomerContactListQuery,
)
from crm_api.db.session import ReadConnection, WriteSession
from crm_api.kit.concurrency import IfMatch, RequireIfMatch
from crm_api.kit.idempotency import IdempotencyKeyHeader, idempotent
from crm_api.kit.responses import json_response, with_etag
from crm_api.kit.routing import ETAG_HEADER, StrictRoute, problems, query_model
from crm_api.kit.schemas import Page

router = APIRouter(prefix="/contacts", tags=["contacts"], route_class=StrictRoute)
#: The contacts of one customer; mounted beside the customers router.
customer_router = APIRouter(prefix="/customers", tags=["contacts"], route_class=StrictRoute)

R = "contacts"
ContactsRead = Annotated[Access, require(R, Action.read)]
ContactsCreate = Annotated[Access, require(R, Action.create)]
ContactsUpdate = Annotated[Access, require(R, Action.update)]
ContactsDelete = Annotated[Access, require(R, Action.delete)]
ContactsPurge = Annotated[Access, require(R, Action.purge)]

_CREATED: dict[int | str, dict[str, Any]] = {201: {"headers": ETAG_HEADER}}


async def _create(
    request: Request,
    session: WriteSession,
    access: Access,
    customer_id: uuid.UUID,
    body: CustomerContactCreate,
    idempotency_key: str | None,
) -> Response:
    async def produce() -> Response:
        row = await service.create_contact(session, access, customer_id, body)
        return with_etag(row, 201, f"/v1/contacts/{row['id']}")

    return await idempotent(request, session, access.principal, idempotency_key, body, produce)


@router.get(
    "",
    operation_id="contacts_list",
    summary="List contacts",
    response_model=Page[Contact],
    responses=problems(400),
)
async def list_contacts(
    access: ContactsRead,
    conn: ReadConnection,
    query: Annotated[ContactListQuery, query_model(ContactListQuery)],
) -> Response:
    """Contacts of the customers in your data scope, filtered and sorted, one cursor page
    at a time. `deleted=true` lists the trash."""
    return json_response(await service.list_contacts(conn, access, query))


@router.post(
    "",
    operation_id="contacts_create",
    summary="Create a contact",
    status_code=201,
    response_model=Contact,
    responses={**problems(400, 409), **_CREATED},
)
async def create_contact(
    request: Request,
    body: ContactCreate,
    access: ContactsCreate,
    session: WriteSession,
    idempotency_key: IdempotencyKeyHeader = None,
) -> Response:
    """Create a contact of `customer_id` (422 `invalid_customer` if you cannot see that
    customer, as for any bad reference in a body). `is_primary: true` demotes the
    customer's previous primary contact. Send `Idempotency-Key` to make retries safe."""
    return await _create(request, session, access, body.customer_id, body, idempotency_key)


@router.get(
    "/{contact_id}",
    operation_id="contacts_get",
    summary="Get a contact",
    response_model=Contact,
    responses={**problems(404), 200: {"headers": ETAG_HEADER}},
)
async def get_contact(
    contact_id: uuid.UUID, access: ContactsRead, conn: ReadConnection
) -> Response:
    return with_etag(await service.get_contact(conn, access, contact_id))


@router.patch(
    "/{contact_id}",
    operation_id="contacts_update",
    summary="Update a contact",
    response_model=Contact,
    responses={**problems(400, 404, 409, 412, 428), 200: {"headers": ETAG_HEADER}},
)
async def update_contact(
    contact_id: uuid.UUID,
    body: ContactUpdate,
    access: ContactsUpdate,
    session: WriteSession,
    strict: RequireIfMatch,
    if_match: IfMatch = None,
) -> Response:
    """Change the fields sent. With `If-Match`, a stale version is a 412.
    `is_primary: true` demotes the customer's previous primary contact."""
    row = await service.update_contact(
        session,
        access,
        contact_id,
        body,
        if_match,
        require_if_match=strict,
    )
    return with_etag(row)


@router.delete(
    "/{contact_id}",
    operation_id="contacts_delete",
    summary="Delete a contact (restorable)",
    status_code=204,
    responses=problems(404, 412, 428),
)
async def delete_contact(
    contact_id: uuid.UUID,
    access: ContactsDelete,
    session: WriteSession,
    strict: RequireIfMatch,
    if_match: IfMatch = None,
) -> Response:
    await service.delete_contact(session, access, contact_id, if_match, require_if_match=strict)
    return Response(status_code=204)


@router.post(
    "/{contact_id}/restore",
    operation_id="contacts_restore",
    summary="Restore a deleted contact",
    response_model=Contact,
    responses={**problems(404, 409), 200: {"headers": ETAG_HEADER}},
)
async def restore_contact(
    contact_id: uuid.UUID, access: ContactsDelete, session: WriteSession
) -> Response:
    """A contact that was primary comes back as a plain contact if its customer has
    another primary by now."""
    return with_etag(await service.restore_contact(session, access, contact_id))


@router.post(
    "/{contact_id}/purge",
    operation_id="contacts_purge",
    summary="Remove a deleted contact for good",
    status_code=204,
    responses=problems(404),
)
async def purge_contact(
    contact_id: uuid.UUID, access: ContactsPurge, session: WriteSession
) -> Response:
    """Needs the `purge` permission. The contact must be deleted first."""
    await service.purge_contact(session, access, contact_id)
    return Response(status_code=204)


# --- /customers/{customer_id}/contacts ----------------------------------------------------
@customer_router.get(
    "/{customer_id}/contacts",
    operation_id="customers_contacts_list",
    summary="List a customer's contacts",
    response_model=Page[Contact],
    responses=problems(400, 404),
)
async def list_customer_contacts(
    customer_id: uuid.UUID,
    access: ContactsRead,
    conn: ReadConnection,
    query: Annotated[CustomerContactListQuery, query_model(CustomerContactListQuery)],
) -> Response:
    """404 `customer_not_found` when the customer is missing, deleted or outside your
    scope; an empty page means the customer has no (matching) contacts."""
    return json_response(await service.list_customer_contacts(conn, access, customer_id, query))


@customer_router.post(
    "/{customer_id}/contacts",
    operation_id="customers_contacts_create",
    summary="Add a contact to a customer",
    status_code=201,
    response_model=Contact,
    responses={**problems(400, 404, 409), **_CREATED},
)
async def create_customer_contact(
    request: Request,
    customer_id: uuid.UUID,
    body: CustomerContactCreate,
    access: ContactsCreate,
    session: WriteSession,
    idempotency_key: IdempotencyKeyHeader = None,
) -> Response:
    """Same as `POST /v1/contacts` with the customer taken from the path."""
    return await _create(request, session, access, customer_id, body, idempotency_key)
