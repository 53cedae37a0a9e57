"""``python -m bench generate``: a fresh benchmark database at realistic volume.

Drops and re-creates the named database (its name must contain ``bench``), runs the Alembic
migrations, then loads an org tree, ~1,000 users with a manager hierarchy and Casbin role
rows, N customers (mixed Chinese and English, skewed across owners, created over three
years) and 1-3 contacts each. Customers and contacts go in with binary ``COPY`` from
``--jobs`` processes; their secondary indexes, primary keys and foreign keys are dropped
for the load and re-created afterwards from the exact definitions the migrations made (the
generator checks they match). Ends with ``VACUUM ANALYZE``.
"""

from __future__ import annotations

import asyncio
import json
import math
import multiprocessing
import random
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg

from bench import asyncpg_url, database_name, sqlalchemy_url, with_database

#: Password of the named bench users (admin@, manager@, rep@bench.crm); bench data only.
BENCH_PASSWORD = "bench-pass-2026"
NAMED_USERS = ("admin@bench.crm", "manager@bench.crm", "rep@bench.crm")

# --- vocabulary ---------------------------------------------------------------------------
CITIES = [
    ("上海", "shanghai"),
    ("北京", "beijing"),
    ("深圳", "shenzhen"),
    ("广州", "guangzhou"),
    ("杭州", "hangzhou"),
    ("苏州", "suzhou"),
    ("南京", "nanjing"),
    ("成都", "chengdu"),
    ("武汉", "wuhan"),
    ("天津", "tianjin"),
    ("重庆", "chongqing"),
    ("西安", "xian"),
    ("宁波", "ningbo"),
    ("青岛", "qingdao"),
    ("厦门", "xiamen"),
    ("长沙", "changsha"),
    ("郑州", "zhengzhou"),
    ("合肥", "hefei"),
    ("无锡", "wuxi"),
    ("佛山", "foshan"),
    ("东莞", "dongguan"),
    ("大连", "dalian"),
]
BRANDS = [
    ("华信", "huaxin"),
    ("东方", "dongfang"),
    ("金桥", "jinqiao"),
    ("长城", "changcheng"),
    ("恒通", "hengtong"),
    ("瑞丰", "ruifeng"),
    ("嘉禾", "jiahe"),
    ("蓝天", "lantian"),
    ("鼎盛", "dingsheng"),
    ("永泰", "yongtai"),
    ("宏达", "hongda"),
    ("天成", "tiancheng"),
    ("盛世", "shengshi"),
    ("联创", "lianchuang"),
    ("安捷", "anjie"),
    ("博远", "boyuan"),
    ("晨光", "chenguang"),
    ("德润", "derun"),
    ("方正", "fangzheng"),
    ("广源", "guangyuan"),
    ("海纳", "haina"),
    ("浩然", "haoran"),
    ("弘毅", "hongyi"),
    ("锦程", "jincheng"),
    ("九州", "jiuzhou"),
    ("凯旋", "kaixuan"),
    ("朗润", "langrun"),
    ("利群", "liqun"),
    ("龙腾", "longteng"),
    ("美达", "meida"),
    ("南山", "nanshan"),
    ("鹏程", "pengcheng"),
    ("启明", "qiming"),
    ("千禧", "qianxi"),
    ("荣盛", "rongsheng"),
    ("三友", "sanyou"),
    ("盛达", "shengda"),
    ("泰和", "taihe"),
    ("通达", "tongda"),
    ("万象", "wanxiang"),
    ("祥云", "xiangyun"),
    ("欣荣", "xinrong"),
    ("星辰", "xingchen"),
    ("旭日", "xuri"),
    ("雅居", "yaju"),
    ("亿丰", "yifeng"),
    ("银河", "yinhe"),
    ("永兴", "yongxing"),
    ("远航", "yuanhang"),
    ("振华", "zhenhua"),
    ("正泰", "zhengtai"),
    ("中联", "zhonglian"),
    ("卓越", "zhuoyue"),
    ("紫金", "zijin"),
    ("泓元", "hongyuan"),
    ("睿智", "ruizhi"),
    ("汇通", "huitong"),
    ("信达", "xinda"),
    ("光明", "guangming"),
    ("和信", "hexin"),
    ("恒瑞", "hengrui"),
    ("金鼎", "jinding"),
    ("丰源", "fengyuan"),
    ("华美", "huamei"),
    ("天宇", "tianyu"),
    ("新华", "xinhua"),
    ("宝丰", "baofeng"),
    ("瀚海", "hanhai"),
]
CN_TRADES = [
    "科技",
    "贸易",
    "电子",
    "机械",
    "物流",
    "医药",
    "食品",
    "建材",
    "纺织",
    "化工",
    "新能源",
    "信息技术",
    "文化传媒",
    "汽车零部件",
    "环保",
    "农业",
    "餐饮管理",
    "供应链",
    "精密制造",
    "生物",
]
CN_SUFFIX = (
    ["有限公司", "股份有限公司", "集团有限公司", "实业有限公司", "有限责任公司"],
    [50, 20, 10, 10, 10],
)
EN_BRANDS = [
    "Acme",
    "Globex",
    "Initech",
    "Umbrella",
    "Northwind",
    "Contoso",
    "Fabrikam",
    "Tailspin",
    "Wingtip",
    "Litware",
    "Proseware",
    "Adatum",
    "Lucerne",
    "Blue Yonder",
    "Summit",
    "Evergreen",
    "Silverline",
    "Pacific Rim",
    "Redwood",
    "Harbor",
    "Crescent",
    "Pinnacle",
    "Vertex",
    "Keystone",
    "Oakridge",
    "Bluewater",
    "Ironclad",
    "Brightpath",
    "Meridian",
    "Sterling",
]
EN_TRADES = [
    "Trading",
    "Logistics",
    "Systems",
    "Foods",
    "Electronics",
    "Medical",
    "Solutions",
    "Industries",
    "Capital",
    "Software",
    "Manufacturing",
    "Retail",
]
EN_SUFFIX = ["Ltd.", "Inc.", "GmbH", "LLC", "Pte. Ltd.", "Co.", "Limited", "S.A."]
SURNAMES = (
    [
        ("王", "wang"),
        ("李", "li"),
        ("张", "zhang"),
        ("刘", "liu"),
        ("陈", "chen"),
        ("杨", "yang"),
        ("黄", "huang"),
        ("赵", "zhao"),
        ("吴", "wu"),
        ("周", "zhou"),
        ("徐", "xu"),
        ("孙", "sun"),
        ("马", "ma"),
        ("朱", "zhu"),
        ("胡", "hu"),
        ("郭", "guo"),
        ("何", "he"),
        ("高", "gao"),
        ("林", "lin"),
        ("罗", "luo"),
        ("郑", "zheng"),
        ("梁", "liang"),
        ("谢", "xie"),
        ("宋", "song"),
        ("唐", "tang"),
        ("韩", "han"),
        ("冯", "feng"),
        ("邓", "deng"),
        ("曹", "cao"),
        ("欧阳", "ouyang"),
    ],
    [
        72,
        72,
        70,
        55,
        55,
        32,
        25,
        21,
        21,
        20,
        18,
        17,
        13,
        13,
        12,
        12,
        12,
        11,
        11,
        10,
        10,
        9,
        8,
        8,
        7,
        6,
        6,
        6,
        6,
        1,
    ],
)
GIVEN = [
    ("伟", "wei"),
    ("芳", "fang"),
    ("娜", "na"),
    ("敏", "min"),
    ("静", "jing"),
    ("丽", "li"),
    ("强", "qiang"),
    ("磊", "lei"),
    ("军", "jun"),
    ("洋", "yang"),
    ("勇", "yong"),
    ("艳", "yan"),
    ("杰", "jie"),
    ("娟", "juan"),
    ("涛", "tao"),
    ("明", "ming"),
    ("超", "chao"),
    ("秀英", "xiuying"),
    ("霞", "xia"),
    ("平", "ping"),
    ("刚", "gang"),
    ("桂英", "guiying"),
    ("建华", "jianhua"),
    ("志强", "zhiqiang"),
    ("晓东", "xiaodong"),
    ("海燕", "haiyan"),
    ("子涵", "zihan"),
    ("浩宇", "haoyu"),
    ("欣怡", "xinyi"),
    ("宇轩", "yuxuan"),
    ("思远", "siyuan"),
    ("雨桐", "yutong"),
    ("俊杰", "junjie"),
    ("文博", "wenbo"),
    ("佳怡", "jiayi"),
]
FIRST = [
    "James",
    "Mary",
    "John",
    "Patricia",
    "Robert",
    "Jennifer",
    "Michael",
    "Linda",
    "David",
    "Elizabeth",
    "William",
    "Emma",
    "Oliver",
    "Sophia",
    "Lucas",
    "Mia",
    "Noah",
    "Olivia",
    "Ethan",
    "Ava",
    "Anna",
    "Thomas",
    "Laura",
    "Daniel",
    "Sarah",
    "Hannah",
    "Pierre",
    "Yuki",
]
LAST = [
    "Smith",
    "Johnson",
    "Brown",
    "Taylor",
    "Miller",
    "Wilson",
    "Moore",
    "Anderson",
    "Thomas",
    "Jackson",
    "White",
    "Harris",
    "Martin",
    "Garcia",
    "Müller",
    "Schmidt",
    "Dubois",
    "Rossi",
    "Tanaka",
    "Kim",
    "Nguyen",
    "Chen",
    "Wong",
    "Lee",
    "O'Brien",
    "Novak",
    "Silva",
]
DISTRICTS = [
    "浦东新区",
    "闵行区",
    "朝阳区",
    "海淀区",
    "南山区",
    "天河区",
    "西湖区",
    "高新区",
    "工业园区",
    "经济开发区",
    "滨江区",
    "武侯区",
]
ROADS = ["人民", "中山", "解放", "建设", "长江", "科技", "世纪", "创业", "滨河", "和平", "新华"]
EN_STREETS = [
    "Market Street",
    "High Street",
    "Harbour Road",
    "King's Road",
    "Main Street",
    "Orchard Road",
    "Bahnhofstrasse",
    "Rue de Rivoli",
]
TITLES_CN = [
    "采购经理",
    "总经理",
    "财务总监",
    "技术总监",
    "销售经理",
    "行政主管",
    "董事长",
    "采购专员",
    "运营总监",
    "法务",
]
TITLES_EN = [
    "Buyer",
    "CEO",
    "CFO",
    "CTO",
    "Head of Procurement",
    "Sales Manager",
    "Operations Director",
    "Office Manager",
    "Legal Counsel",
]
DEPARTMENTS = [
    "采购部",
    "财务部",
    "技术部",
    "总经办",
    "运营部",
    "Procurement",
    "Finance",
    "IT",
    "Operations",
    None,
]
INDUSTRIES = (
    [
        "制造业",
        "批发和零售业",
        "软件和信息技术服务业",
        "交通运输和物流",
        "金融业",
        "医疗健康",
        "教育",
        "房地产",
        "能源",
        "餐饮",
        "农业",
        "Software",
        "Logistics",
        "Manufacturing",
        "Retail",
    ],
    [22, 14, 12, 9, 5, 7, 4, 4, 3, 4, 3, 5, 3, 3, 2],
)
STAGES = (["lead", "prospect", "customer", "churned"], [30, 25, 35, 10])
GRADES = (["A", "B", "C", "D", None], [10, 25, 35, 15, 15])
SOURCES = (
    [
        "web",
        "referral",
        "partner",
        "event",
        "campaign",
        "cold_call",
        "storefront",
        "import",
        "other",
        None,
    ],
    [20, 15, 10, 8, 8, 6, 10, 10, 3, 10],
)
OWNERSHIP = (
    ["private", "state_owned", "foreign", "joint_venture", "collective", "other", None],
    [50, 10, 8, 5, 2, 5, 20],
)
SIZES = (
    ["1-10", "11-50", "51-200", "201-1000", "1001-5000", "5000+", None],
    [20, 25, 20, 12, 5, 3, 15],
)
TAGS = ["vip", "重点客户", "new", "渠道", "KA", "续约", "高潜力", "海外", "政府", "eu"]
TAG_WEIGHTS = [8, 10, 15, 8, 5, 6, 7, 4, 2, 3]
BANKS = [
    "中国工商银行",
    "中国建设银行",
    "招商银行",
    "中国银行",
    "交通银行",
    "HSBC",
    "Deutsche Bank",
    "浦发银行",
]

#: Regions by company (index of the company in the org tree), the rest spread thin.
COMPANY_REGIONS = [
    (["华东", "华北", "华南", "华中"], [80, 6, 8, 6]),
    (["华北", "东北", "华东", "西北"], [75, 10, 10, 5]),
    (["华南", "西南", "华中", "港澳台"], [70, 12, 10, 8]),
    (["Europe", "North America", "Southeast Asia", "港澳台"], [40, 25, 25, 10]),
]
COMPANIES = [
    ("上海明远贸易有限公司", "上海"),
    ("北京明远科技有限公司", "北京"),
    ("广州明远实业有限公司", "广州"),
    ("Mingyuan International Ltd.", "Singapore"),
]
BRANCHES = ["一部", "二部", "三部", "四部", "五部"]
TEAMS = ["一组", "二组", "三组", "四组", "五组"]

CUSTOMER_COLUMNS = (
    "id",
    "name",
    "type",
    "lifecycle_stage",
    "grade",
    "credit_level",
    "industry",
    "region",
    "address",
    "phone",
    "email",
    "website",
    "bank_name",
    "bank_account",
    "tax_number",
    "ownership_type",
    "size",
    "source",
    "tags",
    "custom_fields",
    "owner_id",
    "org_unit_id",
    "external_ref",
    "notes",
    "created_at",
    "updated_at",
    "version",
    "deleted_at",
)
CONTACT_COLUMNS = (
    "id",
    "customer_id",
    "name",
    "title",
    "department",
    "phone",
    "mobile",
    "email",
    "is_primary",
    "notes",
    "created_at",
    "updated_at",
    "version",
    "deleted_at",
)
TABLES = ("customers", "contacts")


def _uuid(rng: random.Random) -> uuid.UUID:
    return uuid.UUID(int=rng.getrandbits(128), version=4)


def _cum(weights: list[int] | list[float]) -> list[float]:
    total, out = 0.0, []
    for w in weights:
        total += w
        out.append(total)
    return out


def _person(rng: random.Random, chinese: bool) -> tuple[str, str]:
    """A display name and an e-mail local part."""
    if chinese:
        ((sur, sur_py),) = rng.choices(SURNAMES[0], SURNAMES[1])
        given, given_py = rng.choice(GIVEN)
        return sur + given, f"{given_py}.{sur_py}"
    first, last = rng.choice(FIRST), rng.choice(LAST)
    return f"{first} {last}", f"{first}.{last}".lower().replace("'", "").replace("ü", "ue")


def _mobile(rng: random.Random, unique: int | None = None) -> str:
    number = (
        f"+86 1{rng.choice('3456789')}{rng.randint(0, 9)} {rng.randint(1000, 9999)} "
        f"{rng.randint(1000, 9999)}"
    )
    if unique is None:  # a contact's: may repeat
        return number
    return f"{number[:8]}{_unique_digits(unique, 8)}"


def _unique_digits(i: int, width: int) -> str:
    """The last ``width`` digits of a customer's phone, from its index: a customer's phone
    is unique among live customers (a natural key, migration 0012_fixes), and the random
    draws they replace are still made, so the rest of the data stays as it was."""
    digits = f"{i % 10**width:0{width}d}"
    return f"{digits[:-4]} {digits[-4:]}"


# --- org tree and users -------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Unit:
    id: uuid.UUID
    name: str
    kind: str
    parent: uuid.UUID | None
    path: str
    company: int  # index into COMPANIES (-1 for the group)


@dataclass(frozen=True, slots=True)
class Person:
    id: uuid.UUID
    email: str
    name: str
    unit: Unit
    manager: uuid.UUID | None
    manager_path: str
    role: str
    #: Relative share of customers this user owns (0: owns none).
    weight: float


def build_org(rng: random.Random) -> tuple[list[Unit], list[Person]]:
    units: list[Unit] = []
    people: list[Person] = []
    counter = [0]

    def unit(name: str, kind: str, parent: Unit | None, company: int) -> Unit:
        uid = _uuid(rng)
        u = Unit(
            uid,
            name,
            kind,
            parent.id if parent else None,
            (parent.path if parent else "/") + f"{uid}/",
            company,
        )
        units.append(u)
        return u

    def person(
        u: Unit,
        role: str,
        manager: Person | None,
        weight: float = 0.0,
        email: str | None = None,
        chinese: bool | None = None,
    ) -> Person:
        counter[0] += 1
        pid = _uuid(rng)
        cn = (u.company != 3 and rng.random() < 0.9) if chinese is None else chinese
        name, _ = _person(rng, cn)
        p = Person(
            pid,
            email or f"u{counter[0]:04d}@bench.crm",
            name,
            u,
            manager.id if manager else None,
            (manager.manager_path if manager else "/") + f"{pid}/",
            role,
            weight,
        )
        people.append(p)
        return p

    group = unit("明远集团 Mingyuan Group", "group", None, -1)
    person(group, "admin", None, email="admin@bench.crm", chinese=False)
    ceo = person(group, "executive", None)
    person(group, "executive", ceo)
    for _ in range(3):
        person(group, "marketer", ceo)
    for _ in range(5):
        person(group, "service_agent", ceo)
    first_branch_manager = True
    first_rep = True
    for ci, (cname, city) in enumerate(COMPANIES):
        company = unit(cname, "company", group, ci)
        director = person(company, "sales_manager", ceo, weight=0.3)
        for bname in BRANCHES:
            label = f"{city}{bname}" if ci != 3 else f"{city} Branch {BRANCHES.index(bname) + 1}"
            branch = unit(f"{label} 销售{bname}" if ci != 3 else label, "branch", company, ci)
            email = "manager@bench.crm" if first_branch_manager else None
            first_branch_manager = False
            bm = person(branch, "sales_manager", director, weight=0.5, email=email)
            for ti, tname in enumerate(TEAMS):
                team = unit(
                    f"{label}{tname}" if ci != 3 else f"{label} Team {ti + 1}", "team", branch, ci
                )
                lead = person(team, "sales_manager", bm, weight=1.0)
                for _ in range(8):
                    # Skewed books: a few reps hold many customers, most a moderate number.
                    weight = rng.lognormvariate(0.0, 0.6) * 2.0
                    email = "rep@bench.crm" if first_rep else None
                    if first_rep:
                        weight = 2.0  # the bench rep holds a typical book
                    first_rep = False
                    person(team, "sales_rep", lead, weight=weight, email=email)
                if rng.random() < 0.5:
                    person(team, "staff", lead, weight=0.2)
    return units, people


async def load_org(conn: asyncpg.Connection, units: list[Unit], people: list[Person]) -> None:
    from crm_api.auth.passwords import hash_password

    now = datetime.now(UTC) - timedelta(days=3 * 365 + 30)
    await conn.copy_records_to_table(
        "org_units",
        columns=(
            "id",
            "name",
            "kind",
            "parent_id",
            "path",
            "depth",
            "active",
            "created_at",
            "updated_at",
            "version",
        ),
        records=[
            (u.id, u.name, u.kind, u.parent, u.path, u.path.count("/") - 2, True, now, now, 1)
            for u in units
        ],
    )
    password_hash = hash_password(BENCH_PASSWORD)
    await conn.copy_records_to_table(
        "users",
        columns=(
            "id",
            "email",
            "display_name",
            "phone",
            "org_unit_id",
            "manager_id",
            "manager_path",
            "kind",
            "password_hash",
            "active",
            "tokens_valid_after",
            "created_at",
            "updated_at",
            "version",
        ),
        records=[
            (
                p.id,
                p.email,
                p.name,
                None,
                p.unit.id,
                p.manager,
                p.manager_path,
                "person",
                password_hash if p.email in NAMED_USERS else None,
                True,
                now,
                now,
                now,
                1,
            )
            for p in people
        ],
    )
    await conn.copy_records_to_table(
        "authz_rules",
        columns=("id", "ptype", "v0", "v1", "v2", "v3", "v4", "v5", "created_at"),
        records=[(uuid.uuid4(), "g", f"user:{p.id}", p.role, "", "", "", "", now) for p in people],
    )
    await conn.execute(
        "UPDATE authz_state SET version = version + 1, changed_at = now() WHERE id = 1"
    )


# --- customers and contacts ---------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Shard:
    url: str
    first: int  # global index of the first customer
    count: int
    seed: int
    batch: int
    owners: list[tuple[uuid.UUID, uuid.UUID, int]]  # (user id, org unit id, company)
    owner_cum: list[float]
    now: datetime


def customer_batch(
    rng: random.Random, shard: Shard, first: int, n: int
) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    """``n`` customer rows starting at global index ``first``, and their contacts."""
    ch = rng.choices
    owners = ch(shard.owners, cum_weights=shard.owner_cum, k=n)
    stages = ch(*STAGES, k=n)
    grades = ch(*GRADES, k=n)
    industries = ch(*INDUSTRIES, k=n)
    sources = ch(*SOURCES, k=n)
    ownership = ch(*OWNERSHIP, k=n)
    sizes = ch(*SIZES, k=n)
    cities = ch(CITIES, k=n)
    brands = ch(BRANDS, k=n)
    trades = ch(CN_TRADES, k=n)
    suffixes = ch(*CN_SUFFIX, k=n)
    n_contacts = ch((1, 2, 3), (40, 40, 20), k=n)
    span = 3 * 365 * 86400.0
    start = shard.now - timedelta(seconds=span)
    rand = rng.random
    randint = rng.randint
    customers: list[tuple[Any, ...]] = []
    contacts: list[tuple[Any, ...]] = []
    for k in range(n):
        i = first + k
        cid = _uuid(rng)
        owner_id, unit_id, company = owners[k]
        chinese = rand() < (0.75 if company != 3 else 0.2)
        company_kind = rand() < 0.78
        city, city_py = cities[k]
        if company_kind:
            if chinese:
                brand, brand_py = brands[k]
                name = f"{city}{brand}{trades[k]}{suffixes[k]}"
                domain = f"{brand_py}-{city_py}.example.cn"
            else:
                b = rng.choice(EN_BRANDS)
                name = f"{b} {rng.choice(EN_TRADES)} {rng.choice(EN_SUFFIX)}"
                domain = b.lower().replace(" ", "") + ".example.com"
            email = f"info{i}@{domain}"
            website = f"https://www.{domain}" if rand() < 0.6 else None
        else:
            name, local = _person(rng, chinese)
            domain = "example.cn" if chinese else "example.com"
            email = f"{local}{i}@{domain}"
            website = None
        if chinese:
            address = f"{city}市{rng.choice(DISTRICTS)}{rng.choice(ROADS)}路{randint(1, 999)}号"
            if company_kind:
                area, _, _ = randint(20, 29), randint(1000, 9999), randint(1000, 9999)
                phone = f"+86 {area} {_unique_digits(i, 8)}"
            else:
                phone = _mobile(rng, unique=i)
        else:
            address = f"{randint(1, 300)} {rng.choice(EN_STREETS)}"
            cc, _, _ = (
                rng.choice(("44", "49", "65", "1", "33")),
                randint(100, 999),
                randint(1000, 9999),
            )
            phone = f"+{cc} {_unique_digits(i, 7)}"
        region = ch(*COMPANY_REGIONS[company])[0] if company >= 0 else "华东"
        # More customers recently: the sqrt skews the spread towards now.
        created = start + timedelta(seconds=span * math.sqrt(rand()))
        age = (shard.now - created).total_seconds()
        updated = created + timedelta(seconds=age * rand() * rand())
        ntags = ch((0, 1, 2, 3), (35, 35, 20, 10))[0]
        tags = list(dict.fromkeys(ch(TAGS, TAG_WEIGHTS, k=ntags))) if ntags else []
        has_bank = company_kind and rand() < 0.5
        customers.append(
            (
                cid,
                name,
                "company" if company_kind else "individual",
                stages[k],
                grades[k],
                randint(1, 5) if rand() < 0.7 else None,
                industries[k],
                region,
                address,
                phone,
                email,
                website,
                rng.choice(BANKS) if has_bank else None,
                f"6222{randint(10**11, 10**12 - 1)}" if has_bank else None,
                f"91{i:016d}" if company_kind and rand() < 0.6 else None,
                ownership[k],
                sizes[k] if company_kind else None,
                sources[k],
                tags,
                '{"erp_level": "gold"}' if rand() < 0.05 else "{}",
                owner_id,
                unit_id,
                f"erp-{i:08d}" if rand() < 0.3 else None,
                "年度框架协议客户; 注意账期。" if rand() < 0.05 else None,
                created,
                updated,
                1,
                updated if rand() < 0.01 else None,
            )
        )
        for j in range(n_contacts[k]):
            cn_person = chinese if rand() < 0.85 else not chinese
            pname, local = _person(rng, cn_person)
            at = created + timedelta(seconds=randint(0, 86400 * 30) if j else 0)
            contacts.append(
                (
                    _uuid(rng),
                    cid,
                    pname,
                    rng.choice(TITLES_CN if cn_person else TITLES_EN),
                    rng.choice(DEPARTMENTS),
                    phone if rand() < 0.5 else None,
                    _mobile(rng) if rand() < 0.7 else None,
                    f"{local}.{i}.{j}@{domain}",
                    j == 0,
                    None,
                    at,
                    at,
                    1,
                    None,
                )
            )
    return customers, contacts


async def _load_shard(shard: Shard) -> tuple[int, int]:
    rng = random.Random(shard.seed)
    conn = await asyncpg.connect(shard.url)
    try:
        await conn.execute("SET synchronous_commit = off")
        done = n_contacts = 0
        while done < shard.count:
            n = min(shard.batch, shard.count - done)
            customers, contacts = customer_batch(rng, shard, shard.first + done, n)
            async with conn.transaction():
                await conn.copy_records_to_table(
                    "customers", columns=CUSTOMER_COLUMNS, records=customers
                )
                await conn.copy_records_to_table(
                    "contacts", columns=CONTACT_COLUMNS, records=contacts
                )
            done += n
            n_contacts += len(contacts)
        return done, n_contacts
    finally:
        await conn.close()


def _shard_main(shard: Shard) -> tuple[int, int]:
    return asyncio.run(_load_shard(shard))


# --- dropping and re-creating keys and indexes around the load ----------------------------
DEFINITIONS_SQL = """
SELECT 'constraint' AS what, c.conname AS name, c.contype::text AS kind,
       c.conrelid::regclass::text AS tbl,
       format('ALTER TABLE %s ADD CONSTRAINT %I %s', c.conrelid::regclass, c.conname,
              pg_get_constraintdef(c.oid)) AS ddl
  FROM pg_constraint c
 WHERE (c.conrelid = ANY($1::regclass[]) AND c.contype IN ('p', 'u', 'f', 'x'))
    OR (c.confrelid = ANY($1::regclass[]) AND c.contype = 'f')
UNION ALL
SELECT 'index', i.indexname, 'i', i.tablename, i.indexdef
  FROM pg_indexes i
 WHERE i.schemaname = current_schema() AND i.tablename = ANY($2::text[])
   AND NOT EXISTS (SELECT 1 FROM pg_constraint c
                    WHERE c.contype IN ('p', 'u', 'x')
                      AND c.conindid = (quote_ident(i.schemaname) || '.' ||
                                        quote_ident(i.indexname))::regclass)
UNION ALL
-- an index column's statistics target (0008's n-gram indexes: 1,000), which the index's
-- definition does not carry: without it ANALYZE lists 1,000 grams, not 10,000, and the
-- search's strategy sees rare grams as possibly frequent (kit/search.py)
SELECT 'stats', i.indexname || '.' || a.attnum, 's', i.tablename,
       format('ALTER INDEX %I ALTER COLUMN %s SET STATISTICS %s', i.indexname, a.attnum,
              a.attstattarget)
  FROM pg_indexes i
  JOIN pg_attribute a ON a.attrelid = (quote_ident(i.schemaname) || '.' ||
                                      quote_ident(i.indexname))::regclass
 WHERE i.schemaname = current_schema() AND i.tablename = ANY($2::text[])
   AND a.attstattarget >= 0
ORDER BY 1, 2
"""


async def definitions(conn: asyncpg.Connection) -> list[dict[str, str]]:
    rows = await conn.fetch(DEFINITIONS_SQL, list(TABLES), list(TABLES))
    return [dict(r) for r in rows]


async def drop_keys(conn: asyncpg.Connection, defs: list[dict[str, str]]) -> None:
    for d in defs:  # foreign keys first: they depend on the primary keys
        if d["what"] == "constraint" and d["kind"] == "f":
            await conn.execute(f'ALTER TABLE {d["tbl"]} DROP CONSTRAINT "{d["name"]}"')
    for d in defs:
        if d["what"] == "constraint" and d["kind"] != "f":
            await conn.execute(f'ALTER TABLE {d["tbl"]} DROP CONSTRAINT "{d["name"]}"')
    for d in defs:
        if d["what"] == "index":
            await conn.execute(f'DROP INDEX "{d["name"]}"')


async def restore_keys(url: str, defs: list[dict[str, str]], jobs: int) -> None:
    """Primary/unique keys and indexes on ``jobs`` connections at once, then foreign keys
    (each validated by one scan) one by one."""
    first = [
        d["ddl"]
        for d in defs
        if d["what"] != "stats" and not (d["what"] == "constraint" and d["kind"] == "f")
    ]
    # biggest first, so the two builders finish together: contacts, then the GIN index
    first.sort(key=lambda s: (" contacts" not in s and "contacts " not in s, "gin" not in s))
    queue: asyncio.Queue[str] = asyncio.Queue()
    for ddl in first:
        queue.put_nowait(ddl)

    async def builder() -> None:
        conn = await asyncpg.connect(url)
        try:
            await conn.execute("SET maintenance_work_mem = '512MB'")
            await conn.execute("SET max_parallel_maintenance_workers = 0")
            while not queue.empty():
                await conn.execute(queue.get_nowait())
        finally:
            await conn.close()

    await asyncio.gather(*(builder() for _ in range(max(1, jobs))))
    conn = await asyncpg.connect(url)
    try:
        await conn.execute("SET maintenance_work_mem = '512MB'")
        for d in defs:
            if d["what"] == "stats" or (d["what"] == "constraint" and d["kind"] == "f"):
                await conn.execute(d["ddl"])
    finally:
        await conn.close()


# --- the command --------------------------------------------------------------------------
async def _recreate_database(url: str) -> None:
    name = database_name(url)
    admin = await asyncpg.connect(with_database(url, "postgres"))
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()


def generate(
    url: str,
    customers: int,
    *,
    seed: int = 2026,
    jobs: int = 2,
    batch: int = 10_000,
    keep_indexes: bool = False,
) -> dict[str, Any]:
    url = asyncpg_url(url)
    name = database_name(url)
    if "bench" not in name:
        raise SystemExit(f"refusing to drop database {name!r}: its name must contain 'bench'")
    timings: dict[str, float] = {}
    t_all = t = time.perf_counter()

    def lap(label: str) -> None:
        nonlocal t
        now = time.perf_counter()
        timings[label] = round(now - t, 2)
        print(f"  {label:<28} {now - t:8.2f} s", flush=True)
        t = now

    print(f"generating {customers:,} customers into {name} ({jobs} loader processes)")
    asyncio.run(_recreate_database(url))
    lap("drop + create database")
    from crm_api.db.migrate import upgrade

    upgrade(sqlalchemy_url(url))
    lap("migrations")

    rng = random.Random(seed)
    units, people = build_org(rng)
    owners = [(p.id, p.unit.id, p.unit.company) for p in people if p.weight > 0]
    owner_cum = _cum([p.weight for p in people if p.weight > 0])

    async def prepare() -> list[dict[str, str]]:
        conn = await asyncpg.connect(url)
        try:
            async with conn.transaction():
                await load_org(conn, units, people)
            defs = await definitions(conn)
            if not keep_indexes:
                await drop_keys(conn, defs)
            return defs
        finally:
            await conn.close()

    defs = asyncio.run(prepare())
    lap(f"org ({len(units)} units, {len(people)} users)")

    now = datetime.now(UTC).replace(microsecond=0)
    jobs = max(1, min(jobs, customers // 1000 or 1))
    per = -(-customers // jobs)
    shards = [
        Shard(
            url,
            s * per,
            min(per, customers - s * per),
            seed * 1000 + s,
            batch,
            owners,
            owner_cum,
            now,
        )
        for s in range(jobs)
        if s * per < customers
    ]
    if len(shards) == 1:
        results = [_shard_main(shards[0])]
    else:
        ctx = multiprocessing.get_context("spawn")
        with ctx.Pool(len(shards)) as pool:
            results = pool.map(_shard_main, shards)
    n_customers = sum(r[0] for r in results)
    n_contacts = sum(r[1] for r in results)
    lap(f"COPY {n_customers:,} customers + {n_contacts:,} contacts")

    if not keep_indexes:
        asyncio.run(restore_keys(url, defs, jobs))
        lap(f"re-create {len(defs)} keys/indexes")

    async def finish() -> None:
        conn = await asyncpg.connect(url)
        try:
            after = await definitions(conn)
            if after != defs:
                missing = [d["name"] for d in defs if d not in after]
                raise SystemExit(
                    f"keys/indexes differ from the migration's after the load: {missing}"
                )
            await conn.execute("VACUUM (ANALYZE) customers, contacts, users, org_units")
            await conn.execute("ANALYZE")
        finally:
            await conn.close()

    asyncio.run(finish())
    lap("vacuum analyze")
    total = round(time.perf_counter() - t_all, 2)
    print(f"  {'total':<28} {total:8.2f} s")
    summary = {
        "database": name,
        "customers": n_customers,
        "contacts": n_contacts,
        "org_units": len(units),
        "users": len(people),
        "seed": seed,
        "jobs": jobs,
        "timings_s": timings,
        "total_s": total,
        "logins": {e: BENCH_PASSWORD for e in NAMED_USERS},
    }
    print(json.dumps({k: v for k, v in summary.items() if k != "timings_s"}, ensure_ascii=False))
    return summary
