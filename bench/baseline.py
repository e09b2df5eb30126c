"""The raw-insert baseline of the pipeline benchmark.

For every table the timed run wrote, a copy is made with
``CREATE TABLE ... (LIKE ... INCLUDING ALL)``: the same columns, defaults,
indexes and unique constraints, without foreign keys. The timed part then
writes the same rows per event that the pipeline wrote, copied from the
pipeline's own rows, 100 events to a transaction. Each transaction sends one
multi-row INSERT per table, then one executemany UPDATE per table where the
pipeline updated rows. Updates of a table that also gets inserts go to the rows just
inserted, as the pipeline updates the commands and orders it has just
created.
"""

import time

COPY_PREFIX = "bench_copy_"

COLUMNS_SQL = """
SELECT column_name, is_identity FROM information_schema.columns
WHERE table_schema = current_schema() AND table_name = %s ORDER BY ordinal_position
"""


class TablePlan:
    """The rows to insert and update in one table's copy."""

    def __init__(self, name: str, inserts: int, updates: int):
        self.name = name
        self.copy = COPY_PREFIX + name
        self.inserts = inserts
        self.updates = updates
        self.columns: list[str] = []
        self.rows: list[tuple] = []  # rows to insert, from the pipeline's own
        self.update_ids: list[int] = []  # rows of the copy that updates go to

    def insert_sql(self, count: int) -> str:
        names = ", ".join(f'"{column}"' for column in self.columns)
        row = "(" + ", ".join(["%s"] * len(self.columns)) + ")"
        return (
            f'INSERT INTO "{self.copy}" ({names}) VALUES '
            + ", ".join([row] * count)
            + " RETURNING id"
        )

    def update_sql(self) -> str:
        assignments = ", ".join(f'"{column}" = %s' for column in self.columns)
        return f'UPDATE "{self.copy}" SET {assignments} WHERE id = %s'


def _prepare(cursor, name: str, inserts: int, updates: int) -> TablePlan | None:
    cursor.execute(COLUMNS_SQL, [name])
    columns = cursor.fetchall()
    if ("id", "YES") not in columns:
        print(
            f"  baseline skips {name}: it has no identity column named id", flush=True
        )
        return None
    plan = TablePlan(name, inserts, updates)
    plan.columns = [column for column, _ in columns if column != "id"]
    cursor.execute(f'DROP TABLE IF EXISTS "{plan.copy}"')
    cursor.execute(f'CREATE TABLE "{plan.copy}" (LIKE "{name}" INCLUDING ALL)')
    names = ", ".join(f'"{column}"' for column in plan.columns)
    needed = max(inserts, updates if not inserts else 0)
    cursor.execute(f'SELECT {names} FROM "{name}" ORDER BY id DESC LIMIT %s', [needed])
    rows = cursor.fetchall()
    if inserts:
        plan.rows = rows[:inserts]
    elif rows:
        # Updates only: the rows the pipeline updated exist before the run.
        cursor.execute(
            plan.insert_sql(len(rows)), [value for row in rows for value in row]
        )
        plan.update_ids = [row_id for (row_id,) in cursor.fetchall()]
        plan.rows = rows
    return plan


def _share(total: int, chunk: int, chunks: int) -> slice:
    return slice(total * chunk // chunks, total * (chunk + 1) // chunks)


def _write_chunk(cursor, plan: TablePlan, chunk: int, chunks: int) -> None:
    inserted: list[int] = []
    rows = plan.rows[_share(len(plan.rows), chunk, chunks)] if plan.inserts else []
    if rows:
        cursor.execute(
            plan.insert_sql(len(rows)), [value for row in rows for value in row]
        )
        inserted = [row_id for (row_id,) in cursor.fetchall()]
    updates = _share(plan.updates, chunk, chunks)
    count = updates.stop - updates.start
    if not count:
        return
    if inserted:
        targets, sources = inserted, rows
    else:
        targets, sources = plan.update_ids[updates], plan.rows[updates]
    if not targets:
        return
    params = [
        (*sources[index % len(sources)], targets[index % len(targets)])
        for index in range(count)
    ]
    cursor.executemany(plan.update_sql(), params)


def run(
    writes: dict[str, tuple[int, int, int]], events: int, per_transaction: int = 100
) -> float:
    """Write the rows of ``writes`` (table: inserted, updated, deleted) into
    copies of their tables; return the seconds the writes took."""
    from django.db import connection, transaction

    plans = []
    with connection.cursor() as cursor:
        for name, (inserts, updates, deletes) in sorted(writes.items()):
            if deletes:
                print(
                    f"  baseline leaves out {deletes} deleted rows of {name}",
                    flush=True,
                )
            plan = _prepare(cursor, name, inserts, updates)
            if plan is not None:
                plans.append(plan)

    chunks = max(1, events // per_transaction)
    started = time.perf_counter()
    for chunk in range(chunks):
        with transaction.atomic(), connection.cursor() as cursor:
            for plan in plans:
                _write_chunk(cursor, plan, chunk, chunks)
    elapsed = time.perf_counter() - started

    with connection.cursor() as cursor:
        for plan in plans:
            cursor.execute(f'DROP TABLE IF EXISTS "{plan.copy}"')
    return elapsed
