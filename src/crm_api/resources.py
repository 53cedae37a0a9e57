"""The registered resources: each declared once (:class:`~crm_api.kit.resource.Resource`),
and read from here by the repositories, the permission catalog, the default grants, the
access explainer and the generated conformance tests (tests/test_conformance.py).

Registering a resource here puts it under those tests: outsider sees nothing, masking,
pagination, ETag, idempotency, bad input.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Any

from crm_api.api_client import schemas as api_client_schemas
from crm_api.contact import schemas as contact_schemas
from crm_api.customer import schemas as customer_schemas
from crm_api.errors import Conflict, UnprocessableEntity
from crm_api.kit.resource import (
    OwnerScoped,
    ParentScoped,
    Reference,
    Resource,
    Samples,
    UnitScoped,
    Unscoped,
)
from crm_api.kit.search import Referenced, Related, Search
from crm_api.models.contact import Contact
from crm_api.models.customer import Customer
from crm_api.models.identity import ApiClient, PersonalAccessToken, Role
from crm_api.models.order import Order
from crm_api.models.org_unit import OrgUnit
from crm_api.models.product import Product
from crm_api.models.user import User
from crm_api.order import schemas as order_schemas
from crm_api.org_unit import schemas as org_unit_schemas
from crm_api.pat import schemas as pat_schemas
from crm_api.product import schemas as product_schemas
from crm_api.role import schemas as role_schemas
from crm_api.user import schemas as user_schemas


def _customer_duplicate(field: str) -> Conflict:
    return Conflict(
        f"A customer with this {field} already exists.", code="customer_duplicate", field=field
    )


def _no_such_org_unit() -> UnprocessableEntity:
    return UnprocessableEntity(
        "org_unit_id does not exist.",
        code="invalid_org_unit",
        errors=[
            {"field": "org_unit_id", "code": "invalid_reference", "message": "no such org unit"}
        ],
    )


def _customer_sample(refs: Mapping[str, str]) -> dict[str, Any]:
    return {
        "name": "上海明远贸易有限公司",
        "owner_id": refs["owner_id"],
        "bank_account": "6222020200112233445",
        "tax_number": f"9131{refs['unique'][:14]}",
    }


CUSTOMERS = Resource(
    name="customers",
    label="customer",
    model=Customer,
    schema=customer_schemas.Customer,
    scoping=OwnerScoped(creator="created_by"),
    sorts=customer_schemas.CustomerSort,
    not_found_code="customer_not_found",
    sensitive=("bank_account", "tax_number"),
    # ``q``: name, e-mail and phone (``search_text``, migration 0003) and the names of the
    # customer's live contacts, through the n-gram indexes of migration 0008.
    search=Search(
        index="ix_customers_search_grams",
        fields=("name", "email", "phone"),
        related=(Related(Contact.__table__, "customer_id", index="ix_contacts_search_grams"),),
        # the index holds each row's org unit and owner too (migration 0012_sperf)
        scope_tokens=True,
    ),
    constraints={
        "uq_customers_external_ref": lambda: _customer_duplicate("external_ref"),
        "uq_customers_tax_number_live": lambda: _customer_duplicate("tax_number"),
        "uq_customers_email_key_live": lambda: _customer_duplicate("email"),
        "uq_customers_phone_key_live": lambda: _customer_duplicate("phone"),
        "fk_customers_org_unit_id_org_units": _no_such_org_unit,
        # purging a customer some order names (orders are kept: they are the books)
        "fk_orders_customer_id_customers": lambda: Conflict(
            "The customer has orders and cannot be purged; it stays in the trash.",
            code="customer_has_orders",
        ),
    },
    samples=Samples(
        path="/v1/customers",
        create=_customer_sample,
        patch={"notes": "changed"},
        wrong_type={"credit_level": "high"},
        search="明远",
    ),
)


def _contact_sample(refs: Mapping[str, str]) -> dict[str, Any]:
    return {"customer_id": refs["parent_id"], "name": "王芳", "mobile": "+86 138 0013 8000"}


CONTACTS = Resource(
    name="contacts",
    label="contact",
    model=Contact,
    schema=contact_schemas.Contact,
    scoping=ParentScoped(CUSTOMERS, "customer_id"),
    sorts=contact_schemas.ContactSort,
    not_found_code="contact_not_found",
    sensitive=("mobile",),
    # ``q``: name, e-mail and work phone; ``mobile`` is deliberately not searched (matching
    # on it would reveal a masked value).
    search=Search(
        index="ix_contacts_search_grams",
        fields=("name", "email", "phone"),
        name="search_name",
        name_lowered=True,
    ),
    constraints={
        "uq_contacts_one_primary": lambda: Conflict(
            "Another contact of this customer became primary at the same time; retry.",
            code="primary_contact_conflict",
        ),
    },
    samples=Samples(
        path="/v1/contacts",
        create=_contact_sample,
        patch={"title": "采购总监"},
        wrong_type={"name": 42},
        search="王芳",
    ),
)


def _user_sample(refs: Mapping[str, str]) -> dict[str, Any]:
    return {"email": f"u{refs['unique']}@example.cn", "display_name": "张伟 Zhang Wei"}


#: Checks whose premise is an owned record that a rep handles and the trash keeps: not
#: users (the administrators' records, deactivated rather than deleted), so these apply.
_SETTINGS_CHECKS = frozenset({"if_match", "if_match_required", "idempotent_create", "bad_input"})

USERS = Resource(
    name="users",
    label="user",
    model=User,
    schema=user_schemas.User,
    # A user is a record owned by itself in its own unit: ``own`` means yourself, the org
    # scopes go by the user's unit.
    scoping=OwnerScoped(owner="id", org_unit="org_unit_id"),
    sorts=user_schemas.UserSort,
    not_found_code="user_not_found",
    soft_delete=False,
    constraints={
        "uq_users_email_lower": lambda: Conflict(
            "Another user has this e-mail address.", code="email_taken", field="email"
        ),
    },
    derived=("roles",),
    grant_group="none",
    samples=Samples(
        path="/v1/users",
        create=_user_sample,
        patch={"display_name": "李娜 Li Na"},
        wrong_type={"display_name": 42},
        search="Zhang Wei",
        checks=_SETTINGS_CHECKS,
        deletes=False,
    ),
)


def _org_unit_sample(refs: Mapping[str, str]) -> dict[str, Any]:
    return {"name": f"华东大区 {refs['unique'][:8]}", "kind": "branch"}


ORG_UNITS = Resource(
    name="org_units",
    label="org unit",
    model=OrgUnit,
    schema=org_unit_schemas.OrgUnit,
    # A unit is placed in itself: the org scopes apply directly, ``own`` covers none.
    scoping=UnitScoped(org_unit="id"),
    sorts=org_unit_schemas.OrgUnitSort,
    not_found_code="org_unit_not_found",
    soft_delete=False,
    grant_group="none",
    samples=Samples(
        path="/v1/org-units",
        create=_org_unit_sample,
        patch={"name": "华南大区"},
        wrong_type={"name": 42},
        search="华东大区",
        checks=_SETTINGS_CHECKS,
        deletes=False,
    ),
)


def _role_sample(refs: Mapping[str, str]) -> dict[str, Any]:
    return {"name": f"region_{refs['unique'][:12]}", "description": "华东区域销售"}


ROLES = Resource(
    name="roles",
    label="role",
    model=Role,
    schema=role_schemas.Role,
    # Configuration, not records: any scope on roles covers all of them.
    scoping=Unscoped(),
    sorts=role_schemas.RoleSort,
    not_found_code="role_not_found",
    soft_delete=False,
    grant_group="none",
    samples=Samples(
        path="/v1/roles",
        create=_role_sample,
        patch={"description": "华南区域销售"},
        wrong_type={"description": 42},
        search="华东区域",
        checks=_SETTINGS_CHECKS | {"reference_data"},
    ),
)


def product_duplicate(existing_id: uuid.UUID | None = None) -> Conflict:
    return Conflict(
        "A live product with this SKU already exists (SKUs ignore letter case).",
        code="product_duplicate",
        field="sku",
        existing_id=str(existing_id) if existing_id is not None else None,
    )


def product_in_use() -> Conflict:
    return Conflict(
        "Order lines name this product, so it cannot be deleted or purged; deactivate it "
        "instead (PATCH active=false): it then stays readable but cannot be ordered.",
        code="product_in_use",
        reason="order_lines",
    )


def _product_sample(refs: Mapping[str, str]) -> dict[str, Any]:
    return {
        "sku": f"HP-LJ-{refs['unique'][:12]}",
        "name": "惠普 LaserJet Pro 黑白激光打印机",
        "brand": "HP",
        "series": "LaserJet Pro",
        "category": "打印机",
        "unit": "台",
        "list_price": "2599.00",
        "currency": "CNY",
        "tax_rate": "0.13",
        "parameters": {"打印速度(ppm)": 38, "双面打印": True},
    }


PRODUCTS = Resource(
    name="products",
    label="product",
    model=Product,
    schema=product_schemas.Product,
    # Reference data: every holder of products:read reads the whole catalog.
    scoping=Unscoped(),
    sorts=product_schemas.ProductSort,
    not_found_code="product_not_found",
    # ``q``: name, SKU, brand and series (``search_text``, the name first: relevance ranks
    # on it), through the n-gram index of migration 0012_sdecl.
    search=Search(index="ix_products_search_grams", fields=("name", "sku", "brand", "series")),
    constraints={
        "uq_products_sku_live": product_duplicate,
        # order_lines.product_id (ON DELETE RESTRICT), from the orders migration
        "fk_order_lines_product_id_products": product_in_use,
    },
    referenced_by=(Reference("order_lines", "product_id", product_in_use),),
    grant_group="none",
    samples=Samples(
        path="/v1/products",
        create=_product_sample,
        patch={"list_price": "2399.50"},
        wrong_type={"active": "yes"},
        search="激光打印机",
        checks=frozenset(
            {
                "reference_data",
                "pagination_over_ties",
                "if_match",
                "if_match_required",
                "idempotent_create",
                "bad_input",
                "every_write_is_audited",
            }
        ),
    ),
)


def _api_client_sample(refs: Mapping[str, str]) -> dict[str, Any]:
    return {"name": f"Storefront {refs['unique'][:8]}", "roles": ["partner"]}


API_CLIENTS = Resource(
    name="api_clients",
    label="API client",
    model=ApiClient,
    schema=api_client_schemas.ApiClient,
    # Owned by whoever created it, placed in its service account's unit (docs/access-model.md).
    # The secret hashes are no field of the schema: no read can return them.
    scoping=OwnerScoped(),
    sorts=api_client_schemas.ApiClientSort,
    not_found_code="api_client_not_found",
    soft_delete=False,
    derived=("roles",),
    grant_group="none",
    samples=Samples(
        path="/v1/api-clients",
        create=_api_client_sample,
        patch={"name": "Storefront (renamed)"},
        wrong_type={"name": 42},
        search="Storefront",
        # no Idempotency-Key on create: a replay would have to keep the secret in clear
        checks=_SETTINGS_CHECKS - {"idempotent_create"},
    ),
)


def _token_sample(refs: Mapping[str, str]) -> dict[str, Any]:
    return {
        "name": f"nightly export {refs['unique'][:8]}",
        "permissions": [{"resource": "customers", "action": "read"}],
        "expires_in_days": 30,
    }


PERSONAL_ACCESS_TOKENS = Resource(
    name="personal_access_tokens",
    label="personal access token",
    model=PersonalAccessToken,
    schema=pat_schemas.PersonalAccessToken,
    # Only ever its owner's, by being signed in (no grant reaches another user's tokens).
    # The token itself is a signed JWT, never stored: no column could return it.
    scoping=OwnerScoped(owner="user_id", org_unit=None),
    sorts=pat_schemas.PersonalAccessTokenSort,
    not_found_code="token_not_found",
    soft_delete=False,
    grant_group="self",
    samples=Samples(
        path="/v1/me/tokens",
        create=_token_sample,
        patch=None,
        wrong_type={"name": 42},
        checks=frozenset({"outsider_sees_nothing", "bad_input"}),
        created_by_owner=True,
    ),
)


def _order_sample(refs: Mapping[str, str]) -> dict[str, Any]:
    return {
        "customer_id": refs["customer_id"],
        "channel": "web",
        "external_ref": f"shop-{refs['unique']}",
        "lines": [
            {"product_id": refs["product_id"], "quantity": "2"},
            {"product_id": refs["product_id"], "quantity": "1", "discount": "1.00"},
        ],
        "shipping_address": {"name": "李娜", "line1": "世纪大道 100 号", "city": "上海"},
    }


ORDERS = Resource(
    name="orders",
    label="order",
    model=Order,
    schema=order_schemas.Order,
    # Owned like a customer's record; placed like its customer unless an assigner says
    # otherwise (crm_api/order/service.py); ``created_by`` is who posted it (the
    # storefront role reads the orders it posted).
    scoping=OwnerScoped(creator="created_by"),
    sorts=order_schemas.OrderSort,
    not_found_code="order_not_found",
    # ``q``: number and external_ref (``search_text``; relevance ranks on the number),
    # through the n-gram index of migration 0012_sdecl, and the name of the order's
    # customer through the customers' index, when the caller may read that customer
    # (live, inside their customers scope: ``Referenced``).
    search=Search(
        index="ix_orders_search_grams",
        fields=("number", "external_ref"),
        name="number",
        referenced=(Referenced(CUSTOMERS, "customer_id"),),
    ),
    derived=("lines",),
    constraints={
        "fk_orders_org_unit_id_org_units": _no_such_org_unit,
    },
    samples=Samples(
        path="/v1/orders",
        create=_order_sample,
        patch={"notes": "changed"},
        wrong_type={"channel": 42},
        search="shop-",
        requires={"customer_id": "customers", "product_id": "products"},
    ),
)

#: Every registered resource, by its Casbin name.
REGISTRY: dict[str, Resource] = {
    r.name: r
    for r in (
        CUSTOMERS,
        CONTACTS,
        USERS,
        ORG_UNITS,
        ROLES,
        PRODUCTS,
        API_CLIENTS,
        PERSONAL_ACCESS_TOKENS,
        ORDERS,
    )
}
