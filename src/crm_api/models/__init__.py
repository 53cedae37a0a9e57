"""All ORM classes, imported here so Alembic and the app share one metadata."""

from crm_api.db.base import Base
from crm_api.models.audit_event import AuditEvent
from crm_api.models.authz_rule import AuthzRule, AuthzState
from crm_api.models.contact import Contact
from crm_api.models.customer import Customer
from crm_api.models.idempotency_key import IdempotencyKey
from crm_api.models.identity import (
    ApiClient,
    LoginThrottle,
    PersonalAccessToken,
    RefreshToken,
    RevokedSession,
    Role,
)
from crm_api.models.order import Order, OrderLine
from crm_api.models.org_unit import OrgUnit
from crm_api.models.product import Product
from crm_api.models.system_setting import SystemSettingsRow
from crm_api.models.user import User

__all__ = [
    "ApiClient",
    "AuditEvent",
    "AuthzRule",
    "AuthzState",
    "Base",
    "Contact",
    "Customer",
    "IdempotencyKey",
    "LoginThrottle",
    "Order",
    "OrderLine",
    "OrgUnit",
    "PersonalAccessToken",
    "Product",
    "RefreshToken",
    "RevokedSession",
    "Role",
    "SystemSettingsRow",
    "User",
]
