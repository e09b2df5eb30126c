"""Which CRM fields a brief reads, and the JSON type of a delivered value.

A brief uses a field when its mapping or ready condition reads
``record.<name>``. CEL's ``references()`` names the variables an expression
reads but not the fields under them, so the source text is searched for
``record.<name>`` paths once the expression is known to read ``record``.

NOTE: the text search sees only dotted access on the top-level ``record``
variable. It misses index access (``record["name"]``), fields of child
records (``children.line_item``, or ``li.record.X`` inside a macro), and any
field name computed at run time. Such fields are not protected by the drift
guard; the nightly run still reports their drift.
"""

import re

from meshline.expressions import ExpressionError, compile_expression

# "record." not preceded by a name character or a dot, so that
# "li.record.X" inside a macro over children does not count.
RECORD_PATH = re.compile(r"(?<![\w.])record\.([A-Za-z_][A-Za-z0-9_]*)")


def fields_of_expression(source: str) -> set[str]:
    if not source:
        return set()
    try:
        variables = compile_expression(source).references().get("variables", [])
    except ExpressionError:
        return set()
    if "record" not in variables:
        return set()
    return set(RECORD_PATH.findall(source))


def fields_of_version(version) -> set[str]:
    """Return the record fields that a brief version's mapping reads."""
    used = set()
    for expression in (version.mapping or {}).values():
        if isinstance(expression, str):
            used |= fields_of_expression(expression)
    used |= fields_of_expression(version.ready_condition)
    return used


def json_type(value) -> str:
    """Return the JSON Schema type name of a decoded JSON value."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def types_agree(declared: str, observed: str) -> bool:
    """Return True when an observed type fits the declared one.

    Null fits every type (a cleared field), and an integer fits "number".
    """
    if observed == "null" or not declared or declared == observed:
        return True
    return declared == "number" and observed == "integer"
