"""Demo data: an org tree, one user per built-in role (known passwords, demo only), a few
hundred customers with contacts, names mixed Chinese and English, and a small product
catalog.

Seeding is idempotent: the org units (by name under their parent) and users (by e-mail)
that already exist are reused, never inserted twice, so ``crm-api seed-demo`` can run after
``serve`` has loaded the demo data, or twice. Customers are added only when asked for
(``customers``), numbered on from the demo customers already there."""

from __future__ import annotations

import random
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine

from crm_api.auth.passwords import hash_password
from crm_api.authz.defaults import BUILTIN_ROLES
from crm_api.models import (
    AuthzRule,
    AuthzState,
    Contact,
    Customer,
    OrgUnit,
    Product,
    Role,
    User,
)

DEMO_PASSWORD = "demo-pass-2026"

ORG_TREE = [
    # (key, parent key, name, kind)
    ("group", None, "明远集团 Mingyuan Group", "group"),
    ("sh", "group", "上海明远贸易有限公司", "company"),
    ("bj", "group", "Mingyuan Beijing Ltd.", "company"),
    ("sh-east", "sh", "华东销售部 East Sales", "branch"),
    ("sh-east-t1", "sh-east", "Team Pudong 浦东组", "team"),
    ("sh-east-t2", "sh-east", "Team Minhang 闵行组", "team"),
    ("bj-north", "bj", "华北销售部 North Sales", "branch"),
    ("bj-service", "bj", "客户服务中心 Service Center", "office"),
]

DEMO_USERS = [
    # (role, email, name, org key, manager role)
    ("admin", "admin@demo.crm", "系统管理员 Admin", "group", None),
    ("executive", "exec@demo.crm", "王总 Wang Wei", "group", None),
    ("sales_manager", "manager@demo.crm", "李娜 Li Na", "sh-east", "executive"),
    ("sales_rep", "rep@demo.crm", "张伟 Zhang Wei", "sh-east-t1", "sales_manager"),
    ("service_agent", "service@demo.crm", "Emily Chen", "bj-service", "executive"),
    ("marketer", "marketing@demo.crm", "Oliver Smith", "sh", "executive"),
    ("staff", "staff@demo.crm", "刘洋 Liu Yang", "sh-east-t2", "sales_manager"),
    ("partner", "partner@demo.crm", "Storefront Partner", "sh", None),
]

CN_NAMES = ["明远", "华信", "东方", "金桥", "长城", "新世纪", "蓝天", "恒通", "瑞丰", "嘉禾"]
CN_SUFFIX = ["贸易有限公司", "科技股份有限公司", "制造有限公司", "物流集团", "电子有限公司"]
EN_NAMES = ["Acme", "Globex", "Initech", "Umbrella", "Stark", "Wayne", "Hooli", "Vandelay"]
EN_SUFFIX = ["Ltd.", "Inc.", "GmbH", "Trading Co.", "Logistics"]
PEOPLE = ["王芳", "李强", "陈静", "赵磊", "Anna Müller", "James Brown", "佐藤 健", "María García"]
REGIONS = ["华东", "华北", "华南", "West", "Europe"]
INDUSTRIES = ["制造业", "零售", "Software", "Logistics", "Finance"]


#: The demo catalog: (sku, name, brand, series, category, unit, list price, tax rate,
#: parameters, active). Added when missing (by SKU), never twice.
DEMO_PRODUCTS: list[tuple[str, str, str, str, str, str, str, str, dict[str, Any], bool]] = [
    (
        "HP-LJ-M404DN",
        "惠普 LaserJet Pro M404dn 黑白激光打印机",
        "HP",
        "LaserJet Pro",
        "打印机",
        "台",
        "2599.00",
        "0.13",
        {"打印速度(ppm)": 38, "双面打印": True},
        True,
    ),
    (
        "HP-LJ-M428FDW",
        "惠普 LaserJet Pro MFP M428fdw 多功能一体机",
        "HP",
        "LaserJet Pro",
        "打印机",
        "台",
        "4299.00",
        "0.13",
        {"打印速度(ppm)": 38, "传真": True},
        True,
    ),
    (
        "HP-CF259A",
        "惠普 59A 原装黑色硒鼓",
        "HP",
        "LaserJet 耗材",
        "耗材",
        "支",
        "699.00",
        "0.13",
        {"页产量": 3000},
        True,
    ),
    (
        "LNV-X1C-G11",
        "ThinkPad X1 Carbon Gen 11 Laptop",
        "Lenovo",
        "ThinkPad X1",
        "笔记本电脑",
        "台",
        "12999.00",
        "0.13",
        {"CPU": "i7-1365U", "内存(GB)": 32},
        True,
    ),
    (
        "LNV-T14-G4",
        "联想 ThinkPad T14 Gen 4 商务笔记本",
        "Lenovo",
        "ThinkPad T",
        "笔记本电脑",
        "台",
        "8499.00",
        "0.13",
        {"CPU": "i5-1345U", "内存(GB)": 16},
        True,
    ),
    (
        "LNV-T480",
        "ThinkPad T480 (discontinued)",
        "Lenovo",
        "ThinkPad T",
        "笔记本电脑",
        "台",
        "5999.00",
        "0.13",
        {},
        False,
    ),
    (
        "DELL-U2723QE",
        "Dell UltraSharp 27 4K USB-C Hub Monitor U2723QE",
        "Dell",
        "UltraSharp",
        "显示器",
        "台",
        "4199.00",
        "0.13",
        {"尺寸(英寸)": 27, "分辨率": "3840x2160"},
        True,
    ),
    (
        "DELL-P2422H",
        "戴尔 P2422H 23.8英寸 办公显示器",
        "Dell",
        "P Series",
        "显示器",
        "台",
        "1299.00",
        "0.13",
        {"尺寸(英寸)": 23.8},
        True,
    ),
    (
        "HW-AX3-PRO",
        "华为 WiFi AX3 Pro 无线路由器",
        "Huawei",
        "WiFi AX",
        "网络设备",
        "台",
        "299.00",
        "0.13",
        {"WiFi": "6", "接口": ["WAN", "LAN", "LAN", "LAN"]},
        True,
    ),
    (
        "HW-S5735-L24",
        "Huawei S5735-L24T4X Gigabit Switch",
        "Huawei",
        "S5735",
        "网络设备",
        "台",
        "3680.00",
        "0.13",
        {"端口数": 28},
        True,
    ),
    (
        "SVC-ONSITE-1Y",
        "上门维修服务 一年 On-site service, 1 year",
        "Mingyuan",
        "服务",
        "服务",
        "年",
        "1200.00",
        "0.06",
        {"响应时间(h)": 24},
        True,
    ),
    (
        "SVC-INSTALL",
        "安装调试 Installation and setup",
        "Mingyuan",
        "服务",
        "服务",
        "次",
        "300.00",
        "0.06",
        {},
        True,
    ),
]

#: Customers a fresh demo database gets when no number is asked for.
DEFAULT_CUSTOMERS = 200


async def seed_demo(
    url: str,
    customers: int | None = None,
    only_if_empty: bool = False,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Load the demo data set; safe to repeat.

    ``customers``: how many customers to add. ``None`` means the default set on a database
    without demo users, and none on one that has them (re-running is a no-op).
    ``only_if_empty``: do nothing at all when the database has any user (``serve`` on a
    database someone already uses). ``progress`` receives one line before the slow part."""
    engine = create_async_engine(url)
    try:
        maker = async_sessionmaker(engine, expire_on_commit=False)
        async with maker() as session, session.begin():
            if only_if_empty:
                existing = (
                    await session.execute(select(func.count()).select_from(User))
                ).scalar_one()
                if existing:
                    return {"skipped": "database already has users"}
            # One seeding at a time (serve and seed-demo started together): the checks
            # for existing rows below must not race each other.
            await session.execute(select(func.pg_advisory_xact_lock(_SEED_LOCK)))
            had_demo = await _demo_user_count(session) > 0
            wanted = customers if customers is not None else (0 if had_demo else DEFAULT_CUSTOMERS)
            if progress is not None:
                what = f"{wanted} customers" if wanted else "no new customers"
                progress(f"loading demo data ({what}) …")
            await _roles(session)
            units, new_units = await _org_tree(session)
            users, new_users = await _users(session, units)
            count = await _customers(session, users, wanted)
            products = await _products(session)
            await session.execute(
                update(AuthzState)
                .where(AuthzState.id == 1)
                .values(version=AuthzState.version + 1, changed_at=func.now())
            )
        return {
            "org_units": len(units),
            "users": len(users),
            "new_org_units": new_units,
            "new_users": new_users,
            "customers": count,
            "customers_added": count,
            "products_added": products,
            "password": DEMO_PASSWORD,
        }
    finally:
        await engine.dispose()


#: Advisory lock key taken while seeding (arbitrary, stable: "crm-seed").
_SEED_LOCK = 0x63726D2D73656564


async def _demo_user_count(session: AsyncSession) -> int:
    emails = [email for _, email, *_ in DEMO_USERS]
    return int(
        (
            await session.execute(
                select(func.count()).select_from(User).where(func.lower(User.email).in_(emails))
            )
        ).scalar_one()
    )


async def _roles(session: AsyncSession) -> None:
    """A ``roles`` row for every role a demo user gets (the migrations create the built-in
    ones; a database seeded some other way gets them here), so ``g`` rows never name a role
    the roles API does not know."""
    wanted = {role for role, *_ in DEMO_USERS}
    rows = [
        {
            "id": uuid.uuid4(),
            "name": name,
            "description": BUILTIN_ROLES.get(name),
            "builtin": name in BUILTIN_ROLES,
            "version": 1,
        }
        for name in sorted(wanted | set(BUILTIN_ROLES))
    ]
    await session.execute(
        insert(Role).values(rows).on_conflict_do_nothing(index_elements=[Role.name])
    )


async def _org_tree(session: AsyncSession) -> tuple[dict[str, OrgUnit], int]:
    """The demo tree's units: the existing ones (same name under the same parent) and
    the missing ones created. Returns the units by key and how many were created."""
    units: dict[str, OrgUnit] = {}
    created = 0
    for key, parent, name, kind in ORG_TREE:
        parent_unit = units.get(parent) if parent else None
        parent_id = parent_unit.id if parent_unit else None
        found = (
            await session.execute(
                select(OrgUnit)
                .where(
                    OrgUnit.name == name,
                    OrgUnit.parent_id == parent_id if parent_id else OrgUnit.parent_id.is_(None),
                )
                .order_by(OrgUnit.created_at)
                .limit(1)
            )
        ).scalar_one_or_none()
        if found is not None:
            units[key] = found
            continue
        created += 1
        unit_id = uuid.uuid4()
        path = (parent_unit.path if parent_unit else "/") + f"{unit_id}/"
        unit = OrgUnit(
            id=unit_id,
            name=name,
            kind=kind,
            parent_id=parent_unit.id if parent_unit else None,
            path=path,
            depth=path.count("/") - 2,
        )
        session.add(unit)
        units[key] = unit
        await session.flush()
    return units, created


async def _users(session: AsyncSession, units: dict[str, OrgUnit]) -> tuple[dict[str, User], int]:
    """The demo users: existing ones (by e-mail, left as they are: their password or
    roles may have been changed on purpose) and the missing ones created with their
    role. Returns the users by role and how many were created."""
    users: dict[str, User] = {}
    password_hash: str | None = None
    created = 0
    for role, email, name, org_key, manager_role in DEMO_USERS:
        found = (
            await session.execute(select(User).where(func.lower(User.email) == email.lower()))
        ).scalar_one_or_none()
        if found is not None:
            users[role] = found
            continue
        created += 1
        if password_hash is None:
            password_hash = hash_password(DEMO_PASSWORD)
        user_id = uuid.uuid4()
        manager = users.get(manager_role) if manager_role else None
        user = User(
            id=user_id,
            email=email,
            display_name=name,
            org_unit_id=units[org_key].id,
            manager_id=manager.id if manager else None,
            manager_path=(manager.manager_path if manager else "/") + f"{user_id}/",
            password_hash=password_hash,
        )
        session.add(user)
        await session.flush()
        session.add(AuthzRule(ptype="g", v0=f"user:{user_id}", v1=role))
        users[role] = user
    await session.flush()
    return users, created


async def _products(session: AsyncSession) -> int:
    """The demo catalog's products that are missing (by SKU, any case); how many were
    added."""
    now = datetime.now(UTC)
    rows = [
        {
            "id": uuid.uuid4(),
            "sku": sku,
            "name": name,
            "brand": brand,
            "series": series,
            "category": category,
            "unit": unit,
            "list_price": Decimal(price),
            "currency": "CNY",
            "tax_rate": Decimal(tax),
            "parameters": parameters,
            "active": active,
            "created_at": now,
            "updated_at": now,
            "version": 1,
        }
        for sku, name, brand, series, category, unit, price, tax, parameters, active in (
            DEMO_PRODUCTS
        )
    ]
    added = await session.execute(
        insert(Product).values(rows).on_conflict_do_nothing().returning(Product.id)
    )
    return len(added.all())


async def _customers(session: AsyncSession, users: dict[str, User], n: int) -> int:
    """Add ``n`` customers (with contacts) owned by the demo users, numbered after the
    demo customers already there, so names, e-mails and tax numbers stay unique."""
    if n <= 0:
        return 0
    owners = [users[r] for r in ("sales_rep", "sales_manager", "staff", "executive", "partner")]
    first = int(
        (
            await session.execute(
                select(func.count())
                .select_from(Customer)
                .where(Customer.owner_id.in_([u.id for u in owners]))
            )
        ).scalar_one()
    )
    rng = random.Random(2026 + first)
    now = datetime.now(UTC)
    contacts: list[Contact] = []
    for i in range(first, first + n):
        owner = rng.choice(owners)
        chinese = rng.random() < 0.6
        name = (
            f"{rng.choice(CN_NAMES)}{rng.choice(CN_SUFFIX)}"
            if chinese
            else f"{rng.choice(EN_NAMES)} {rng.choice(EN_SUFFIX)}"
        ) + f" #{i + 1}"
        created = now - timedelta(days=rng.randint(0, 720), minutes=rng.randint(0, 1440))
        customer = Customer(
            id=uuid.uuid4(),
            name=name,
            type=rng.choice(["company", "company", "individual"]),
            lifecycle_stage=rng.choice(["lead", "prospect", "customer", "customer", "churned"]),
            grade=rng.choice(["A", "B", "C", "D", None]),
            credit_level=rng.randint(1, 5),
            industry=rng.choice(INDUSTRIES),
            region=rng.choice(REGIONS),
            phone=f"+86 21 {rng.randint(1000, 9999)} {rng.randint(1000, 9999)}",
            email=f"contact{i}@example.com",
            tags=rng.sample(["vip", "重点", "new", "渠道"], k=rng.randint(0, 2)),
            custom_fields={},
            owner_id=owner.id,
            org_unit_id=owner.org_unit_id,
            # Unique per demo number (a live tax number is unique): 9131000 + 11 digits.
            tax_number=f"9131000{7 * 10**10 + i:011d}" if rng.random() < 0.5 else None,
            bank_account=f"6222{rng.randint(10**11, 10**12 - 1)}" if rng.random() < 0.5 else None,
            source=rng.choice(["web", "referral", "partner", "event", "storefront"]),
            created_at=created,
            updated_at=created,
            version=1,
        )
        session.add(customer)
        for j in range(rng.randint(1, 3)):
            contacts.append(
                Contact(
                    id=uuid.uuid4(),
                    customer_id=customer.id,
                    name=rng.choice(PEOPLE),
                    title=rng.choice(["采购经理", "CEO", "Buyer", "财务总监"]),
                    email=f"p{i}-{j}@example.com",
                    is_primary=(j == 0),
                    created_at=created,
                    updated_at=created,
                    version=1,
                )
            )
    await session.flush()  # customers first: no ORM relationship orders the inserts
    session.add_all(contacts)
    await session.flush()
    return n
