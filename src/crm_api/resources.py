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
from crm_api.kit.resource import OwnerScoped, ParentScoped, Resource, Samples
from crm_api.models.contact import Contact
from crm_api.models.customer import Customer


def _customer_duplicate(field: str) -> Conflict:
    return Conflict(
        f"A customer with this {field} already exists.", code="customer_duplicate", field=field
    )


def _no_such_org_unit() -> UnprocessableEntity:
    return UnprocessableEntity(
        "org_unit_id does not exist.", code="invalid_org_unit",
        errors=[{"field": "org_unit_id", "code": "invalid_reference",
                 "message": "no such org unit"}],
    )


def _customer_sample(refs: Mapping[str, str]) -> dict[str, Any]:
    return {"name": "上海明远贸易有限公司", "owner_id": refs["owner_id"],
            "bank_account": "6222020200112233445", "tax_number": f"9131{refs['unique'][:14]}"}


CUSTOMERS = Resource(
    name="customers",
    label="customer",
    model=Customer,
    schema=customer_schemas.Customer,
    scoping=OwnerScoped(),
    sorts=customer_schemas.CustomerSort,
    not_found_code="customer_not_found",
    sensitive=("bank_account", "tax_number"),
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

#: Every registered resource, by its Casbin name.
REGISTRY: dict[str, Resource] = {r.name: r for r in (CUSTOMERS, CONTACTS)}
