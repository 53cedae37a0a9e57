"""search grams: an n-gram GIN index behind ``q`` on customers and contacts (core PostgreSQL)

``crm_search_grams(search_text)`` turns a generated, lower()ed search column (migration
0003: the fields joined by U+001F, the name first) into the 1- and 2-character grams a
substring term can be found by, tagged by where they occur:

- in the name: ``chr(2)`` + the first character and ``chr(2)`` + the first two (the name
  starts with them), every character and pair at a later position untagged, and the last
  character + ``chr(4)`` (the name ends with it);
- in the other fields: ``chr(3)`` + each character and pair (a pair holding U+001F, which
  no served term holds, is left out).

The index is an expression index over live rows: the arrays are never stored in the table.
``crm_search_query(term, tag)`` gives a term's grams the same way (lower()ed in SQL, as the
column was). Every match found through the index is re-checked with the LIKE ``q`` always
used, so results are exactly those of substring matching; the index only finds candidates.

The statistics target of the indexed expression is 1,000 (ANALYZE keeps the 10,000 most
common grams): the search chooses its strategy per request from them.

Both functions use only ``pg_catalog`` built-ins (no other function of ours), so they work
under any ``search_path`` (pg_dump/restore, autovacuum's ANALYZE of the expression).

Revision ID: 0008
Revises: 0011
Create Date: 2026-12-02 09:45:00.000000
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0008"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Frozen copies of crm_api.kit.search.GRAMS_SQL / QUERY_SQL (a migration must not change
# when the application does).
GRAMS = r"""
CREATE FUNCTION crm_search_grams(t text) RETURNS text[]
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
AS $$
SELECT ARRAY(
    SELECT CASE
               WHEN p.i + p.k - 1 > p.n THEN chr(3)
               WHEN p.i = 1 THEN chr(2)
               ELSE ''
           END || substr(t, p.i, p.k)
    FROM (
        SELECT i, k, coalesce(nullif(strpos(t, chr(31)), 0) - 1, length(t)) AS n
        FROM generate_series(1, length(t)) AS i, (VALUES (1), (2)) AS w(k)
        WHERE i + k - 1 <= length(t)
    ) AS p
    WHERE strpos(substr(t, p.i, p.k), chr(31)) = 0
      AND (p.i + p.k - 1 <= p.n OR p.i > p.n)
    UNION ALL
    SELECT substr(t, n, 1) || chr(4)
    FROM (SELECT coalesce(nullif(strpos(t, chr(31)), 0) - 1, length(t)) AS n) AS e
    WHERE n > 0
)
$$
"""

QUERY = r"""
CREATE FUNCTION crm_search_query(term text, tag text) RETURNS text[]
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
AS $$
SELECT CASE
           WHEN length(l) = 1 THEN ARRAY[tag || l]
           ELSE ARRAY(SELECT tag || substr(l, i, 2) FROM generate_series(1, length(l) - 1) AS i)
       END
FROM (SELECT lower(term) AS l) AS s
$$
"""

INDEXES = (
    ("ix_customers_search_grams", "customers"),
    ("ix_contacts_search_grams", "contacts"),
)


def upgrade() -> None:
    op.execute(GRAMS)
    op.execute(QUERY)
    for name, table in INDEXES:
        op.execute(
            f"CREATE INDEX {name} ON {table} USING gin (crm_search_grams(search_text))"
            " WHERE deleted_at IS NULL"
        )
        # ANALYZE keeps up to 10 x the target most common grams: at 1,000 (a sample of
        # 300,000 rows) any gram it does not list is on fewer than ~0.06 % of 1,000,000
        # customers, which is what tells a rare term from a frequent one (kit/search.py).
        op.execute(f"ALTER INDEX {name} ALTER COLUMN 1 SET STATISTICS 1000")


def downgrade() -> None:
    for name, _table in INDEXES:
        op.execute(f"DROP INDEX {name}")
    op.execute("DROP FUNCTION crm_search_query(text, text)")
    op.execute("DROP FUNCTION crm_search_grams(text)")
