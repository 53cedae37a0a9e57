"""The registered resources: each declared once (:class:`~crm_api.kit.resource.Resource`),
and read from here by the repositories, the permission catalog, the default grants, the
access explainer and the generated conformance tests (tests/test_conformance.py).

Registering a resource here puts it under those tests: outsider sees nothing, masking,
pagination, ETag, idempotency, bad input.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from crm_api.contact import schemas as contact_schemas
from crm_api.customer import schemas as customer_schemas
from crm_api.errors import Conflict, UnprocessableEntity
from crm_api.kit.resource import (
    OwnerScoped,
    ParentScoped,
    Resource,
    Samples,
    UnitScoped,
    Unscoped,
)
from crm_api.kit.search import Related, Search
from crm_api.models.contact import Contact
from crm_api.models.customer import Customer
from crm_api.models.identity import Role
from crm_api.models.org_unit import OrgUnit
from crm_api.models.user import User
from crm_api.org_unit import schemas as org_unit_schemas
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
    scoping=OwnerScoped(),
    sorts=customer_schemas.CustomerSort,
    not_found_code="customer_not_found",
    sensitive=("bank_account", "tax_number"),
    # ``q``: name, e-mail and phone (``search_text``, migration 0003) and the names of the
    # customer's live contacts, through the n-gram indexes of migration 0008.
    search=Search(
        index="ix_customers_search_grams",
        fields=("name", "email", "phone"),
        related=(Related(Contact.__table__, "customer_id", index="ix_contacts_search_grams"),),
    ),
    constraints={
        "uq_customers_external_ref": lambda: _customer_duplicate("external_ref"),
        "uq_customers_tax_number_live": lambda: _customer_duplicate("tax_number"),
        "fk_customers_org_unit_id_org_units": _no_such_org_unit,
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
        checks=_SETTINGS_CHECKS,
    ),
)

#: Every registered resource, by its Casbin name.
REGISTRY: dict[str, Resource] = {r.name: r for r in (CUSTOMERS, CONTACTS, USERS, ORG_UNITS, ROLES)}
