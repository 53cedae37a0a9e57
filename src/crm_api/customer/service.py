"""Customers: business rules. No HTTP here, and no commit (the request owns the transaction).

Raises: ``NotFound`` (``customer_not_found``, also for records outside the caller's scope),
``Conflict`` (``customer_duplicate``), ``Forbidden`` (``assign_not_allowed``),
``PreconditionFailed`` (stale If-Match), ``UnprocessableEntity`` (bad references).
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from crm_api.authz.dependencies import access_for
from crm_api.authz.enforcer import PolicyEngine
from crm_api.authz.types import Access, Action, Principal
from crm_api.customer import repository as repo
from crm_api.customer.schemas import (
    NOT_NULLABLE,
    UPSERT_NOT_NULLABLE,
    CustomerCreate,
    CustomerListQuery,
    CustomerTransfer,
    CustomerTransferOne,
    CustomerUpdate,
    CustomerUpsertFields,
)
from crm_api.db.reader import Reader
from crm_api.errors import (
    Conflict,
    Forbidden,
    PreconditionFailed,
    ProblemError,
    UnprocessableEntity,
)
from crm_api.kit import lifecycle
from crm_api.kit import resource as kit
from crm_api.kit.concurrency import check_if_match
from crm_api.kit.idempotency import Claim
from crm_api.kit.resource import Locked
from crm_api.kit.transfer import check_placement, invalid_owner
from crm_api.models.user import User
from crm_api.resources import CUSTOMERS
from crm_api.user import service as users

R = CUSTOMERS


async def list_customers(conn: Reader, access: Access, query: CustomerListQuery) -> dict[str, Any]:
    return await repo.list_page(conn, access, query)


async def get_customer(conn: Reader, access: Access, customer_id: uuid.UUID) -> dict[str, Any]:
    return await kit.read_or_404(conn, R, access, customer_id)


async def _duplicate(
    session: AsyncSession, access: Access, field: str, holder: uuid.UUID | None
) -> Conflict:
    """409 ``customer_duplicate`` naming ``field``, and ``holder`` (the customer that has
    it) to a caller who may see it."""
    # Name the existing record only to a caller allowed to see it (no existence leak) and,
    # for a sensitive field, to see it unmasked there: naming the holder of a tax number
    # shown masked would confirm a guessed value of that record.
    visible = holder is not None and await repo.is_visible(
        session, access, holder, unmasked=field in R.sensitive
    )
    return Conflict(
        f"A customer with this {field} already exists.",
        code="customer_duplicate",
        field=field,
        existing_id=str(holder) if visible else None,
    )


def _duplicates(access: Access) -> lifecycle.Resolve:
    """What a customer write that violates a unique index means: another customer has the
    ``external_ref``, or a live one the tax number, the e-mail or the phone (compared as
    natural keys: ``A@x.cn `` is ``a@x.cn``, ``+86 21-5555 0000`` is ``862155550000``).

    The index decides, so a write pays nothing for the check (a look-up before it would
    need a lock per key to be right under concurrency: two statements per write). Only
    the write that fails looks up the holder, after its transaction was rolled back, to
    build the 409 (:func:`_duplicate`)."""

    async def resolve(
        session: AsyncSession, constraint: str, record: Mapping[str, Any]
    ) -> ProblemError | None:
        field = repo.UNIQUE_FIELDS.get(constraint)
        if field is None or record.get(field) is None:
            return None
        holder = await repo.find_holder(
            session, field, str(record[field]), exclude_id=record.get("id")
        )
        return await _duplicate(session, access, field, holder)

    return resolve


async def create_customer(
    session: AsyncSession,
    access: Access,
    assign: Access | None,
    data: CustomerCreate,
    claim: Claim | None = None,
) -> dict[str, Any]:
    """A new customer; ``claim``: the request's ``Idempotency-Key``, claimed in the
    record's own INSERT (the checks before it only read). A taken key is the unique
    index's verdict on that INSERT (:func:`_duplicates`)."""
    values, placement = await lifecycle.prepare_create(
        session, R, access, assign, data.model_dump(), users
    )
    assert placement is not None
    return await lifecycle.insert(
        session, R, access, values, placement, claim=claim, resolve=_duplicates(access)
    )


async def update_customer(
    session: AsyncSession,
    access: Access,
    assign: Access | None,
    customer_id: uuid.UUID,
    patch: CustomerUpdate,
    if_match: str | None,
    *,
    require_if_match: bool,
) -> dict[str, Any]:
    locked = await lifecycle.lock_or_404(
        session, R, access, customer_id, if_match=if_match, require_if_match=require_if_match
    )
    before, changes = await lifecycle.prepare_update(
        session,
        R,
        access,
        assign,
        locked,
        patch.model_dump(exclude_unset=True),
        not_nullable=NOT_NULLABLE,
        users=users,
    )
    _hold_keys(locked, changes)
    return await lifecycle.save_changes(
        session, R, access, locked, before, changes, resolve=_duplicates(access)
    )


def _hold_keys(locked: Locked, changes: dict[str, Any]) -> None:
    """A new e-mail or phone of an update (PATCH or upsert) is held from now on
    (``changes`` gains the flag): a duplicate that migration 0012 left without its key
    takes the new one like any other customer, and the index then checks it."""
    if changes.get("email") and not locked.row.email_held:
        changes["email_held"] = True
    if changes.get("phone") and not locked.row.phone_held:
        changes["phone_held"] = True


async def delete_customer(
    session: AsyncSession,
    access: Access,
    customer_id: uuid.UUID,
    if_match: str | None,
    *,
    require_if_match: bool,
) -> None:
    await lifecycle.soft_delete(
        session, R, access, customer_id, if_match, require_if_match=require_if_match
    )


async def restore_customer(
    session: AsyncSession, access: Access, customer_id: uuid.UUID
) -> dict[str, Any]:
    """A customer whose tax number, e-mail or phone a live customer took meanwhile stays
    deleted (409, :func:`_duplicates`)."""
    return await lifecycle.restore(session, R, access, customer_id, resolve=_duplicates(access))


async def purge_customer(session: AsyncSession, access: Access, customer_id: uuid.UUID) -> None:
    """Remove a soft-deleted customer (and its contacts) for good."""
    await lifecycle.purge(session, R, access, customer_id)


# --- transfer ----------------------------------------------------------------------------
async def _new_owner(session: AsyncSession, access: Access, to_user_id: uuid.UUID) -> User:
    """An active user a record may be handed to, with their own org unit: the rule of
    every owner change (:func:`check_placement`)."""
    to_user = await users.get_active_user(session, to_user_id)
    if to_user is None:
        raise invalid_owner("to_user_id")
    await check_placement(session, access, to_user, to_user.org_unit_id, owner_field="to_user_id")
    return to_user


async def transfer_customers(
    session: AsyncSession, access: Access, data: CustomerTransfer
) -> dict[str, Any]:
    """Hand ``from_user_id``'s live customers (all, or those listed) to ``to_user_id``:
    owner and org unit change, ``version`` moves, one audit event per customer. Only the
    customers inside the caller's ``assign`` scope move; the others are left alone."""
    if data.from_user_id == data.to_user_id:
        raise UnprocessableEntity(
            "from_user_id and to_user_id are the same user.",
            code="same_user",
            errors=[
                {"field": "to_user_id", "code": "same_user", "message": "same as from_user_id"}
            ],
        )
    if await users.find_user(session, data.from_user_id) is None:
        raise UnprocessableEntity(
            "from_user_id is not a user.",
            code="invalid_user",
            errors=[
                {"field": "from_user_id", "code": "invalid_reference", "message": "no such user"}
            ],
        )
    to_user = await _new_owner(session, access, data.to_user_id)
    moved = await repo.transfer(
        session,
        access,
        to_owner=to_user.id,
        to_org_unit=to_user.org_unit_id,
        from_owner=data.from_user_id,
        ids=list(dict.fromkeys(data.customer_ids)) if data.customer_ids else None,
    )
    contacts = None
    if data.include_contacts:
        contacts = await repo.count_contacts(session, [m.id for m in moved])
    return {"transferred": len(moved), "contacts": contacts}


async def transfer_customer(
    session: AsyncSession,
    access: Access,
    customer_id: uuid.UUID,
    data: CustomerTransferOne,
    if_match: str | None,
    *,
    require_if_match: bool,
) -> dict[str, Any]:
    """Hand one customer to ``to_user_id``; the customer as it now is."""
    await lifecycle.lock_or_404(
        session, R, access, customer_id, if_match=if_match, require_if_match=require_if_match
    )
    to_user = await _new_owner(session, access, data.to_user_id)
    await repo.transfer(
        session, access, to_owner=to_user.id, to_org_unit=to_user.org_unit_id, ids=[customer_id]
    )
    return await kit.read_or_404(session, R, access, customer_id)


# --- upsert by natural key -------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class UpsertAccess:
    """What an upsert may do with customers: ``create`` a new one, ``update`` the one
    holding the key (within that scope), ``assign`` an owner or unit other than the
    caller's. ``None``: not granted. Build it with :func:`upsert_access`."""

    create: Access | None
    update: Access | None
    assign: Access | None = None


def upsert_access(policy: PolicyEngine, principal: Principal) -> UpsertAccess:
    """The caller's customer rights for an upsert, as the route dependencies would resolve
    them (for a handler whose own permission is on another resource: order POSTs)."""
    return UpsertAccess(
        create=access_for(policy, principal, R.name, Action.create),
        update=access_for(policy, principal, R.name, Action.update),
        assign=access_for(policy, principal, R.name, Action.assign),
    )


@dataclass(frozen=True, slots=True)
class Upserted:
    """The customer an upsert created or found: its id, whether it was created, and the
    record as the caller may see it (masked)."""

    id: uuid.UUID
    created: bool
    customer: dict[str, Any]


#: What a created customer gets for the fields an upsert leaves out (POST's defaults).
_CREATE_DEFAULTS: dict[str, Any] = {
    "type": "company",
    "lifecycle_stage": "lead",
    "tags": [],
    "custom_fields": {},
}


def natural_keys(sent: dict[str, Any]) -> list[repo.NaturalKey]:
    """Each of ``external_ref``, e-mail, phone that ``sent`` carries, in that order (the
    schema demands one; 422 ``natural_key_missing`` otherwise)."""
    keys = [repo.NaturalKey(name, str(sent[name])) for name in repo.KEY_FIELDS if sent.get(name)]
    if keys:
        return keys
    raise UnprocessableEntity(
        "Send external_ref, email or phone to identify the customer.",
        code="natural_key_missing",
        errors=[
            {"field": f, "code": "natural_key_missing", "message": "one of these is required"}
            for f in repo.KEY_FIELDS
        ],
    )


def _taken(key: repo.NaturalKey, existing_id: uuid.UUID | None, *, deleted: bool) -> Conflict:
    """The key is held by a customer this upsert may not change: out of the caller's
    update scope (named by id only to a caller who may see it: the same 409 as a POST of
    a taken ``external_ref``), or in the trash."""
    detail = f"A customer with this {key.field} already exists."
    if deleted:
        detail = f"A deleted customer holds this {key.field}: restore it, or purge it first."
    return Conflict(
        detail,
        code="customer_duplicate",
        field=key.field,
        existing_id=str(existing_id) if existing_id is not None else None,
    )


async def upsert_customer_by_natural_key(
    session: AsyncSession,
    access: UpsertAccess,
    block: CustomerUpsertFields,
    *,
    external_ref: str | None = None,
    if_match: str | None = None,
    require_if_match: bool = False,
) -> Upserted:
    """Create or update the customer holding ``block``'s natural key (the first of
    :func:`natural_keys` that a customer holds — any customer, however it was written;
    ``external_ref`` from a URL overrides the block's). Never commits. A customer found by
    e-mail or phone takes the ``external_ref`` sent unless it has another (409
    ``customer_duplicate``).

    A new key is written by ``INSERT … ON CONFLICT DO NOTHING`` on the customers' unique
    indexes: concurrent upserts of one new buyer (orders posted twice, retries) wait for
    the first and then update the customer it made, so exactly one exists; an insert that
    yields to another customer's tax number is a 409 then. An existing customer is
    locked and updated with the fields sent (masked write-back and placement rules as a
    PATCH; nothing changed: no write, no event, same version). Audited like any create or
    update.

    Raises 403 ``permission_denied`` (no ``create`` for a new key, no ``update`` for an
    existing one), 409 ``customer_duplicate`` (the key is held by a customer outside the
    caller's update scope, named only when visible, or in the trash; or a taken tax
    number), 412/428 (``if_match`` on an existing customer; on a new key any ``if_match``
    is a 412: there is no version to match), 422 (bad placement, masked values, no key).
    """
    sent = block.model_dump(exclude_unset=True)
    if external_ref is not None:
        sent["external_ref"] = external_ref
    keys = natural_keys(sent)
    # Normally one pass. Another when our insert yielded to a unique index: a concurrent
    # upsert of the same buyer won (found now), or the tax number is taken (a 409), or the
    # winner was deleted (or lost its key) before our read: the key is free again.
    yielded = False
    for _ in range(3):
        key, found = keys[0], None
        for key in keys:  # the first key sent that a customer holds finds it
            found = await repo.find_by_key(session, key)
            if found is not None:
                break
        if found is None:
            key = keys[0]
            if if_match is not None:
                raise PreconditionFailed(
                    f"No customer holds this {key.field}: there is no version to match.",
                    code="version_mismatch",
                )
            if yielded and access.create is not None and sent.get("tax_number"):
                # no customer holds a key sent, yet the insert yielded: to the tax number?
                holder = await repo.find_holder(session, "tax_number", sent["tax_number"])
                if holder is not None:
                    raise await _duplicate(session, access.create, "tax_number", holder)
            row = await _create_keyed(session, access, sent, key)
            if row is not None:
                return Upserted(row["id"], True, row)
            yielded = True
            continue
        customer_id, deleted = found
        row = await _update_keyed(
            session,
            access,
            sent,
            key,
            customer_id,
            deleted=deleted,
            if_match=if_match,
            require_if_match=require_if_match,
        )
        if row is not None:
            return Upserted(customer_id, False, row)
    raise Conflict(
        f"The customer holding this {key.field} changed while it was being written; retry.",
        code="customer_upsert_conflict",
        field=key.field,
    )


def _denied(action: Action) -> Forbidden:
    return Forbidden(
        f"Your role does not allow '{action.value}' on '{R.name}'.",
        code="permission_denied",
        resource=R.name,
        action=action.value,
    )


async def _create_keyed(
    session: AsyncSession, access: UpsertAccess, sent: dict[str, Any], key: repo.NaturalKey
) -> dict[str, Any] | None:
    """The new customer, or ``None`` when the insert yielded to a unique index (any of
    the customer's: a key sent, held meanwhile by a concurrent upsert of the same buyer,
    or the tax number): the caller looks again. ``INSERT … ON CONFLICT DO NOTHING``, so
    the caller's transaction goes on (an order's claimed ``Idempotency-Key`` with it)."""
    if access.create is None:
        raise _denied(Action.create)
    values = {**_CREATE_DEFAULTS, **sent, "key_kind": key.field}
    values, placement = await lifecycle.prepare_create(
        session, R, access.create, access.assign, values, users
    )
    assert placement is not None
    return await lifecycle.insert_unless_exists(session, R, access.create, values, placement)


async def _update_keyed(
    session: AsyncSession,
    access: UpsertAccess,
    sent: dict[str, Any],
    key: repo.NaturalKey,
    customer_id: uuid.UUID,
    *,
    deleted: bool,
    if_match: str | None,
    require_if_match: bool,
) -> dict[str, Any] | None:
    """The customer holding the key, updated; ``None`` when it no longer holds it."""
    visible_to = access.update or access.create
    if deleted:
        seen = visible_to is not None and await repo.is_visible(session, visible_to, customer_id)
        raise _taken(key, customer_id if seen else None, deleted=True)
    if access.update is None:
        raise _denied(Action.update)
    locked = await kit.lock(session, R, kit.scoped_entity(R, access.update), customer_id)
    if locked is None:
        if await repo.find_by_key(session, key) != (customer_id, False):
            return None  # deleted or re-keyed meanwhile: look again
        # Outside the update scope: a 409 like a POST of a taken external_ref, naming the
        # customer only to a caller who may see it.
        seen = await repo.is_visible(session, access.update, customer_id)
        raise _taken(key, customer_id if seen else None, deleted=False)
    check_if_match(if_match, locked.row.version, required=require_if_match)
    ref, held_ref = sent.get("external_ref"), locked.row.external_ref
    if key.field != "external_ref" and ref and held_ref not in (None, ref):
        # found by e-mail or phone, but it is another system's record of that name
        raise Conflict(
            f"The customer holding this {key.field} has another external_ref.",
            code="customer_duplicate",
            field=key.field,
            existing_id=str(customer_id),
        )
    before, changes = await lifecycle.prepare_update(
        session,
        R,
        access.update,
        access.assign,
        locked,
        sent,
        not_nullable=UPSERT_NOT_NULLABLE,
        users=users,
    )
    _hold_keys(locked, changes)
    return await lifecycle.save_changes(
        session,
        R,
        access.update,
        locked,
        before,
        changes,
        resolve=_duplicates(access.update),
    )
