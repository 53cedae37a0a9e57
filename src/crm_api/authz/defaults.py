"""Built-in roles and their default grants ``(resource, action, scope)``.

Loaded into ``authz_rules`` by the first migration; administrators edit them afterwards
through the roles API. ``*`` matches any resource or action.
"""

from __future__ import annotations

from crm_api.resources import REGISTRY

#: The registered business resources (crm_api/resources.py): the business roles' grants
#: below cover each one as soon as it is registered.
BUSINESS = tuple(r.name for r in REGISTRY.values() if r.grant_group == "business")
SETTINGS = ("users", "org_units", "roles", "api_clients")

BUILTIN_ROLES: dict[str, str] = {
    "admin": "System administrator: everything, everywhere.",
    "executive": "Company leader: every business record; settings read-only.",
    "sales_manager": "Leads a sales team: records of their org unit and everything below it.",
    "sales_rep": "Sells: their own customers and contacts.",
    "service_agent": "Serves customers: reads every customer, edits contacts.",
    "marketer": "Segments and campaigns: reads and exports every customer.",
    "staff": "General user: their own records.",
    "partner": "API client of a partner or storefront: its own records only.",
    "storefront": (
        "API client of an online shop: creates orders and upserts customers; reads only the "
        "orders and customers it created."
    ),
}


def _grants(
    resources: tuple[str, ...], actions: tuple[str, ...], scope: str
) -> list[tuple[str, str, str]]:
    return [(r, a, scope) for r in resources for a in actions]


CRUD = ("read", "create", "update", "delete")

#: Read by every role that sells or services (the catalog is reference data: scope ``all``);
#: written by ``admin`` only, who may grant it to others. Not ``staff`` (no selling).
CATALOG_READERS = (
    "executive",
    "sales_manager",
    "sales_rep",
    "service_agent",
    "marketer",
    "partner",
)
#: The system settings (decimal places, prefixes, SLA targets …) every internal role reads;
#: not ``partner`` (external clients: commission rates are internal).
SETTINGS_READERS = ("executive", "sales_manager", "sales_rep", "service_agent", "marketer", "staff")

DEFAULT_GRANTS: dict[str, list[tuple[str, str, str]]] = {
    "admin": [("*", "*", "all")],
    "executive": [
        *_grants(BUSINESS, (*CRUD, "export", "assign", "read_sensitive"), "all"),
        ("audit_events", "read", "all"),
        *_grants(SETTINGS, ("read",), "all"),
    ],
    "sales_manager": [
        *_grants(BUSINESS, (*CRUD, "export", "assign", "read_sensitive"), "org_subtree"),
        ("audit_events", "read", "org_subtree"),
        ("users", "read", "org_subtree"),
        ("org_units", "read", "all"),
    ],
    "sales_rep": [
        *_grants(BUSINESS, CRUD, "own"),
        ("audit_events", "read", "own"),
        ("users", "read", "org_unit"),
        ("org_units", "read", "all"),
    ],
    "service_agent": [
        ("customers", "read", "all"),
        *_grants(("contacts",), ("read", "create", "update"), "all"),
        ("org_units", "read", "all"),
    ],
    "marketer": [
        *_grants(BUSINESS, ("read", "export"), "all"),
        ("org_units", "read", "all"),
    ],
    "staff": [
        *_grants(BUSINESS, ("read", "create", "update"), "own"),
    ],
    "partner": [
        *_grants(BUSINESS, ("read", "create", "update"), "own"),
    ],
    # Not the business group: exactly these, over what the client itself created (a
    # customer it made stays its own after a manager hands it to a rep). Migration 0009.
    "storefront": [
        *_grants(("customers",), ("read", "create", "update"), "created_by_self"),
        *_grants(("orders",), ("read", "create"), "created_by_self"),
    ],
}


for _role in CATALOG_READERS:
    DEFAULT_GRANTS[_role].append(("products", "read", "all"))
for _role in SETTINGS_READERS:
    DEFAULT_GRANTS[_role].append(("system_settings", "read", "all"))


def default_policy_rows() -> list[dict[str, str]]:
    return [
        {"ptype": "p", "v0": role, "v1": res, "v2": act, "v3": scope, "v4": ""}
        for role, grants in DEFAULT_GRANTS.items()
        for res, act, scope in grants
    ]
