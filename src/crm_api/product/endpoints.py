from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Request, Response

from crm_api.authz.dependencies import require
from crm_api.authz.types import Access, Action
from crm_api.db.session import ReadConnection, WriteSession
from crm_api.kit.concurrency import IfMatch, RequireIfMatch
from crm_api.kit.idempotency import IdempotencyKeyHeader, idempotent
from crm_api.kit.responses import json_response, with_etag
from crm_api.kit.routing import ETAG_HEADER, StrictRoute, problems, query_model
from crm_api.kit.schemas import Page
from crm_api.product import service
from crm_api.product.schemas import Product, ProductCreate, ProductListQuery, ProductUpdate
from crm_api.system_settings import CurrentSystemSettings

router = APIRouter(prefix="/products", tags=["products"], route_class=StrictRoute)

R = "products"
ProductsRead = Annotated[Access, require(R, Action.read)]
ProductsCreate = Annotated[Access, require(R, Action.create)]
ProductsUpdate = Annotated[Access, require(R, Action.update)]
ProductsDelete = Annotated[Access, require(R, Action.delete)]
ProductsPurge = Annotated[Access, require(R, Action.purge)]


@router.get(
    "",
    operation_id="products_list",
    summary="List products",
    response_model=Page[Product],
    responses=problems(400),
)
async def list_products(
    access: ProductsRead,
    conn: ReadConnection,
    query: Annotated[ProductListQuery, query_model(ProductListQuery)],
) -> Response:
    """The catalog (reference data: every holder of `products:read` sees all of it),
    filtered by brand, series, category, currency, `active` and a `list_price` range,
    searched with `q`, sorted, one cursor page at a time."""
    return json_response(await service.list_products(conn, access, query))


@router.post(
    "",
    operation_id="products_create",
    summary="Create a product",
    status_code=201,
    response_model=Product,
    responses={**problems(409), 201: {"headers": ETAG_HEADER}},
)
async def create_product(
    request: Request,
    body: ProductCreate,
    access: ProductsCreate,
    session: WriteSession,
    settings: CurrentSystemSettings,
    idempotency_key: IdempotencyKeyHeader = None,
) -> Response:
    """Add a product to the catalog. `currency` defaults to the system setting
    `default_currency`. A SKU a live product holds (ignoring letter case) is a 409
    `product_duplicate` naming it. Send `Idempotency-Key` to make retries safe."""

    async def produce() -> Response:
        row = await service.create_product(session, access, settings, body)
        return with_etag(row, 201, f"/v1/products/{row['id']}")

    return await idempotent(request, session, access.principal, idempotency_key, body, produce)


@router.get(
    "/{product_id}",
    operation_id="products_get",
    summary="Get a product",
    response_model=Product,
    responses={**problems(404), 200: {"headers": ETAG_HEADER}},
)
async def get_product(
    product_id: uuid.UUID, access: ProductsRead, conn: ReadConnection
) -> Response:
    return with_etag(await service.get_product(conn, access, product_id))


@router.patch(
    "/{product_id}",
    operation_id="products_update",
    summary="Update a product",
    response_model=Product,
    responses=problems(404, 409, 412, 428),
)
async def update_product(
    product_id: uuid.UUID,
    body: ProductUpdate,
    access: ProductsUpdate,
    session: WriteSession,
    strict: RequireIfMatch,
    if_match: IfMatch = None,
) -> Response:
    """Change the fields sent. With `If-Match`, a stale version is a 412. `active=false`
    takes a product off sale (it stays readable, and orders that name it keep it)."""
    row = await service.update_product(
        session, access, product_id, body, if_match, require_if_match=strict
    )
    return with_etag(row)


@router.delete(
    "/{product_id}",
    operation_id="products_delete",
    summary="Delete a product (restorable)",
    status_code=204,
    responses=problems(404, 409, 412, 428),
)
async def delete_product(
    product_id: uuid.UUID,
    access: ProductsDelete,
    session: WriteSession,
    strict: RequireIfMatch,
    if_match: IfMatch = None,
) -> Response:
    """To the trash (restorable). A product that order lines name is a 409
    `product_in_use`: deactivate it instead."""
    await service.delete_product(session, access, product_id, if_match, require_if_match=strict)
    return Response(status_code=204)


@router.post(
    "/{product_id}/restore",
    operation_id="products_restore",
    summary="Restore a deleted product",
    response_model=Product,
    responses=problems(404, 409),
)
async def restore_product(
    product_id: uuid.UUID, access: ProductsDelete, session: WriteSession
) -> Response:
    """Back from the trash; 409 `product_duplicate` if a live product took its SKU."""
    return with_etag(await service.restore_product(session, access, product_id))


@router.post(
    "/{product_id}/purge",
    operation_id="products_purge",
    summary="Remove a deleted product for good",
    status_code=204,
    responses=problems(404, 409),
)
async def purge_product(
    product_id: uuid.UUID, access: ProductsPurge, session: WriteSession
) -> Response:
    """Admin only. The product must be deleted first; one that order lines name is a 409
    `product_in_use`."""
    await service.purge_product(session, access, product_id)
    return Response(status_code=204)
