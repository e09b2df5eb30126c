"""Compiling, checking and evaluating CEL expressions.

Triggers, brief mappings and acceptance criteria are CEL, evaluated with the
``common-expression-language`` package (pinned at 0.10). Facts about that
version that shape this module:

- its runtime errors carry no position (a missing field is a bare KeyError),
  so errors are rewrapped with the expression, the field and a column;
- it checks no types at compile time, so ``check_expression`` compares
  ``references()`` with the allowed variables and functions;
- it turns a Python Decimal into a float, so amounts reach CEL only as
  strings and are computed by the ``decimal.*`` functions registered here;
- building the context once per event and reusing it is about ten times
  faster than passing a dict to every evaluation.
"""

import functools
import re
from decimal import Decimal, InvalidOperation

import cel
from cel.stdlib import add_stdlib_to_context

from meshline import money

TRIGGER_VARIABLES = frozenset({"record", "previous", "changed", "event"})
MAPPING_VARIABLES = frozenset({"record", "children", "event", "connector"})
ACCEPTANCE_VARIABLES = frozenset({"command", "record", "children", "event"})

# Operators and macros the parser reports as functions; always allowed.
_BUILTIN_FUNCTIONS = {
    "_+_", "_-_", "_*_", "_/_", "_%_", "-_", "!_", "_==_", "_!=_", "_<_", "_<=_",
    "_>_", "_>=_", "_&&_", "_||_", "_?_:_", "_[_]", "@in", "_in_", "in", "size",
    "has", "all", "exists", "exists_one", "map", "filter", "int", "uint",
    "double", "string", "bytes", "bool", "timestamp", "duration", "contains",
    "startsWith", "endsWith", "matches", "type", "dyn", "lowerAscii",
    "upperAscii", "trim", "split", "join", "replace", "first", "last",
    "getDate", "getMonth", "getFullYear", "getDayOfMonth", "getDayOfWeek",
    # The package's "strings" and "lists" extension libraries.
    "charAt", "indexOf", "lastIndexOf", "substring", "reverse", "distinct",
    "flatten", "slice", "sort", "lists.range", "strings.quote",
}  # fmt: skip

CUSTOM_FUNCTIONS = {
    "lookup", "lookup_or", "decimal.add", "decimal.sub", "decimal.mul",
    "decimal.div", "decimal.round", "decimal.sum", "decimal.compare",
    "decimal.eq", "decimal.percent_of", "nfc",
}  # fmt: skip


class ExpressionError(Exception):
    """An expression failed to compile or evaluate, with a message for people."""

    def __init__(self, message: str, *, expression: str = "", name: str = "", detail=None):
        super().__init__(message)
        self.message = message
        self.expression = expression
        self.name = name
        self.detail = detail or {}


class LookupMissing(ExpressionError):
    """``lookup(table, key)`` found no row; the pipeline opens mapping_missing."""

    def __init__(self, table: str, key, *, reason_code: str = "mapping_missing"):
        super().__init__(
            f"The lookup table {table!r} has no row for {key!r}.",
            detail={"table": table, "key": key},
        )
        self.table = table
        self.key = key
        self.reason_code = reason_code


@functools.lru_cache(maxsize=2048)
def compile_expression(source: str) -> cel.Program:
    try:
        return cel.compile(source)
    except ValueError as exc:
        raise ExpressionError(_syntax_message(source, str(exc)), expression=source) from None


def _syntax_message(source: str, raw: str) -> str:
    match = re.search(r"<input>:(\d+):(\d+): (.*?)(?:\n|$)", raw)
    if not match:
        return f"The expression is invalid: {raw.splitlines()[0]}"
    line, column, text = match.groups()
    return f"Syntax error at line {line}, column {column}: {text}"


def check_expression(source: str, allowed_variables) -> list[str]:
    """Return the problems with an expression, empty when it is usable."""
    if not source or not source.strip():
        return ["The expression is empty."]
    try:
        program = compile_expression(source)
    except ExpressionError as exc:
        return [exc.message]
    problems = []
    refs = program.references()
    # The parser reports ``decimal.eq(a, b)`` as the variable "decimal" and the
    # function "eq", and the ``l`` of ``items.map(l, ...)`` as a variable.
    namespaces = {name.split(".", 1)[0] for name in CUSTOM_FUNCTIONS if "." in name}
    short_names = {name.rsplit(".", 1)[1] for name in CUSTOM_FUNCTIONS if "." in name}
    bound = set(_MACRO_VARIABLE.findall(source))
    for variable in refs.get("variables", []):
        if variable in allowed_variables or variable in namespaces or variable in bound:
            continue
        allowed = ", ".join(sorted(allowed_variables))
        problems.append(f"Unknown variable {variable!r}: use one of {allowed}.")
    for function in refs.get("functions", []):
        known = function in _BUILTIN_FUNCTIONS or function in CUSTOM_FUNCTIONS
        if not known and function not in short_names:
            problems.append(f"Unknown function {function!r}.")
    return problems


# The variable a comprehension macro binds: ``.map(l, ...)``, ``.all(x, ...)``.
_MACRO_VARIABLE = re.compile(
    r"\.(?:map|filter|all|exists|exists_one)\(\s*([A-Za-z_][A-Za-z0-9_]*)\s*,"
)


def _dec(value, what="amount") -> Decimal:
    try:
        return money.to_decimal(value, what)
    except money.MoneyError as exc:
        raise ValueError(str(exc)) from None


def _div(a, b) -> str:
    divisor = _dec(b, "divisor")
    if divisor == 0:
        raise ValueError("Division by zero.")
    return str(_dec(a) / divisor)


def _round(amount, currency) -> str:
    return str(money.quantize(_dec(amount), str(currency)))


def _sum(values) -> str:
    return str(sum((_dec(v) for v in values), Decimal(0)))


def _compare(a, b) -> int:
    left, right = _dec(a), _dec(b)
    return (left > right) - (left < right)


def _percent_of(amount, percent) -> str:
    return str(_dec(amount) * _dec(percent, "percent") / Decimal(100))


def _nfc(value) -> str:
    import unicodedata

    return unicodedata.normalize("NFC", str(value))


_DECIMAL_FUNCTIONS = {
    "decimal.add": lambda a, b: str(_dec(a) + _dec(b)),
    "decimal.sub": lambda a, b: str(_dec(a) - _dec(b)),
    "decimal.mul": lambda a, b: str(_dec(a) * _dec(b)),
    "decimal.div": _div,
    "decimal.round": _round,
    "decimal.sum": _sum,
    "decimal.compare": _compare,
    "decimal.eq": lambda a, b: _dec(a) == _dec(b),
    "decimal.percent_of": _percent_of,
    "nfc": _nfc,
}


class Evaluator:
    """One CEL context for one record change, shared by every expression.

    ``lookups`` maps a table slug to a dict of rows (key → value); a missing
    table or key raises LookupMissing when the expression runs.
    """

    def __init__(self, variables: dict, lookups=None, missing_reasons=None):
        self._lookups = lookups or {}
        self._missing_reasons = missing_reasons or {}
        self._missing: list[LookupMissing] = []
        self.context = cel.Context()
        for name, value in variables.items():
            self.context.add_variable(name, value)
        # Only the string and list extensions: the "math" and "core" ones
        # compute in binary floats, which must never touch an amount.
        add_stdlib_to_context(self.context, ["strings", "lists"])
        for name, function in _DECIMAL_FUNCTIONS.items():
            self.context.add_function(name, function)
        self.context.add_function("lookup", self._lookup)
        self.context.add_function("lookup_or", self._lookup_or)

    def set_variable(self, name: str, value) -> None:
        self.context.add_variable(name, value)

    def _lookup(self, table, key):
        rows = self._lookups.get(table)
        value = None if rows is None else rows.get(_lookup_key(key))
        if value is None:
            missing = LookupMissing(
                table, key, reason_code=self._missing_reasons.get(table, "mapping_missing")
            )
            self._missing.append(missing)
            raise KeyError(f"{table}[{key}]")
        return value

    def _lookup_or(self, table, key, default):
        rows = self._lookups.get(table) or {}
        return rows.get(_lookup_key(key), default)

    def evaluate(self, source: str, *, name: str = ""):
        program = compile_expression(source)
        self._missing.clear()
        try:
            return program.execute(self.context)
        except KeyError as exc:
            if self._missing:
                missing = self._missing[0]
                missing.expression, missing.name = source, name
                raise missing from None
            raise ExpressionError(
                _missing_field_message(source, name, exc.args[0] if exc.args else "?"),
                expression=source,
                name=name,
                detail={"missing_field": exc.args[0] if exc.args else None},
            ) from None
        except (TypeError, ValueError, RuntimeError) as exc:
            if self._missing:
                missing = self._missing[0]
                missing.expression, missing.name = source, name
                raise missing from None
            where = f" in {name!r}" if name else ""
            raise ExpressionError(
                f"The expression{where} failed: {_first_line(exc)} Expression: {source}",
                expression=source,
                name=name,
            ) from None


def _lookup_key(key) -> str:
    if isinstance(key, float):
        raise ValueError("A lookup key must not be a float; convert it with string().")
    return str(key)


def _first_line(exc: Exception) -> str:
    text = str(exc).split("\n")[0]
    if "Python function call failed:" in text:
        text = text.split("Python function call failed:", 1)[1].split(". Check function")[0]
    return text.strip().rstrip(".") + "."


def _missing_field_message(source: str, name: str, field: str) -> str:
    column = source.find(f".{field}")
    where = f" in {name!r}" if name else ""
    position = f" at column {column + 2}" if column >= 0 else ""
    return (
        f"The field {field!r} used{where}{position} is not in the data. Use "
        f"has(x.{field}) to test for it, or check the field name. Expression: {source}"
    )


def to_cel_value(value):
    """Return a JSON-like value safe for CEL: every Decimal becomes a string."""
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, float):
        # JSON payloads are decoded with Decimal, so a float here is a bug.
        return str(Decimal(repr(value)))
    if isinstance(value, dict):
        return {str(k): to_cel_value(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_cel_value(v) for v in value]
    return value


def is_decimal_string(value) -> bool:
    if not isinstance(value, str):
        return False
    try:
        return Decimal(value).is_finite()
    except InvalidOperation:
        return False
