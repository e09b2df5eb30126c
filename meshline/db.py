"""Writing new rows of several tables in one statement, on PostgreSQL.

Each statement costs a round trip to the server, and a transaction two more
(BEGIN and COMMIT). A hot path that writes a handful of rows, such as the
inbound endpoint, spends most of its time on those. One ``INSERT`` with its
other inserts as data-modifying ``WITH`` clauses writes them all in a single
round trip, and in autocommit it is its own transaction: every row is
written, or, when a constraint fails, none is.

The values are the ones ``bulk_create`` would write: each field prepares
its own, so conversions, defaults and ``auto_now_add`` stay the same.
"""

from django.db import connections, transaction
from django.db.models import AutoField


def insert_statement(objs, using: str = "default") -> tuple[str, list]:
    """Return the ``INSERT`` statement and its parameters for new instances of
    one model. Instances without a primary key get one from the database.

    Each field prepares its values with ``pre_save`` and
    ``get_db_prep_save``, as in ``bulk_create``. The statement text is
    written here, because compiling it through the ORM cost more than the
    insert itself in the endpoint's profile."""
    objs = list(objs)
    connection = connections[using]
    opts = type(objs[0])._meta
    with_pk = [obj._is_pk_set() for obj in objs]
    if any(with_pk) and not all(with_pk):
        raise ValueError(f"Either every {opts.label} row has its primary key set, or none has.")
    fields = [field for field in opts.concrete_fields if not field.generated]
    if not with_pk[0]:
        fields = [field for field in fields if not isinstance(field, AutoField)]
    params = []
    for obj in objs:
        obj._prepare_related_fields_for_save(operation_name="insert_statement")
        for field in fields:
            value = field.pre_save(obj, add=True)
            if hasattr(value, "resolve_expression"):
                raise ValueError(
                    f"{opts.label}.{field.name} contains an expression, but "
                    "insert_together takes plain values only. Save this row with the ORM."
                )
            params.append(field.get_db_prep_save(value, connection))
    quote = connection.ops.quote_name
    row = f"({', '.join(['%s'] * len(fields))})"
    sql = (
        f"INSERT INTO {quote(opts.db_table)} ({', '.join(quote(field.column) for field in fields)}) "
        f"VALUES {', '.join([row] * len(objs))}"
    )
    return sql, params


def insert_together(groups, using: str = "default") -> None:
    """Insert new rows of several models in one statement.

    ``groups`` contains lists of unsaved instances, one list per model; empty
    lists are skipped. Rows that refer to each other need their primary keys
    set beforehand. Foreign keys are checked when the statement ends, so the
    order of the groups does not matter. A failed constraint raises
    ``IntegrityError`` with nothing written. Inside an atomic block the
    statement runs in a savepoint, so the caller's transaction survives it."""
    groups = [list(objs) for objs in groups if objs]
    connection = connections[using]
    if connection.vendor != "postgresql":
        raise NotImplementedError(
            "insert_together needs PostgreSQL's data-modifying WITH. "
            "Use bulk_create on other databases."
        )
    parts = [insert_statement(objs, using) for objs in groups]
    *first, (last_sql, last_params) = parts
    clauses = ", ".join(f"w{index} AS ({sql})" for index, (sql, _params) in enumerate(first))
    sql = f"WITH {clauses} {last_sql}" if first else last_sql
    params = [param for _sql, part_params in first for param in part_params] + list(last_params)
    if connection.in_atomic_block:
        with transaction.atomic(using=using), connection.cursor() as cursor:
            cursor.execute(sql, params)
    else:
        with connection.cursor() as cursor:
            cursor.execute(sql, params)
    for objs in groups:
        for obj in objs:
            obj._state.adding = False
            obj._state.db = using
