"""Settings parsing and JSON templates of the REST adapter.

The settings keys are described in ``syncflows.adapters.rest``. Every problem
raises ImproperlyConfigured naming the key, when the adapter is built.
"""

import copy
import re
from dataclasses import dataclass, field
from decimal import Decimal
from urllib.parse import quote, urlsplit

from django.core.exceptions import ImproperlyConfigured

from syncflows.adapters.base import REASONS

OPERATIONS = ("find_existing", "preflight", "compensate", "fetch_invoice")
METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")
DEFAULT_TIMEOUT = 10.0
DEFAULT_RESPONSE = {"reference": "id", "number": "number"}
DEFAULT_INVOICE_RESPONSE = {
    name: name for name in ("state", "currency", "total", "paid_on", "credited_total")
} | {"reference": "id", "number": "number"}
RESPONSE_KEYS = {
    "command": {"reference", "number", "data"},
    "find_existing": {"reference", "number", "data", "items", "key"},
    "preflight": {"data"},
    "compensate": {"data"},
    "fetch_invoice": set(DEFAULT_INVOICE_RESPONSE),
}
WHOLE_PLACEHOLDER = re.compile(r"^\{\{\s*([A-Za-z_][\w.]*)(\?)?\s*\}\}$")
INLINE_PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z_][\w.]*)\s*\}\}")
PATH_PLACEHOLDER = re.compile(r"\{([A-Za-z_][\w.]*)\}")
MISSING = object()


@dataclass(frozen=True)
class RestSettings:
    base_url: str
    timeout: float
    idempotency_header: str | None
    commands: dict
    rules: list


def parse_settings(slug: str, settings: dict) -> RestSettings:
    if not isinstance(settings, dict):
        raise ImproperlyConfigured(f"Destination {slug}: settings must be an object.")
    return RestSettings(
        base_url=parse_base_url(slug, settings.get("base_url")),
        timeout=parse_timeout(slug, settings.get("timeout")),
        idempotency_header=parse_header(slug, settings.get("idempotency_header")),
        commands=parse_commands(slug, settings.get("commands")),
        rules=parse_rules(slug, settings.get("errors")),
    )


def parse_header(slug: str, value) -> str | None:
    if value is None or value == "":
        return None
    if not (isinstance(value, str) and re.fullmatch(r"[A-Za-z0-9-]+", value)):
        raise config_error(
            slug, "idempotency_header", f"is not a header name: {value!r}"
        )
    return value


@dataclass(frozen=True)
class CommandSpec:
    name: str
    method: str
    path: str
    body: object = None
    response: dict = field(default_factory=dict)
    match: dict = field(default_factory=dict)
    state_map: dict = field(default_factory=dict)


@dataclass(frozen=True)
class ErrorRule:
    statuses: frozenset
    status_classes: frozenset  # 4 for "4xx"
    pattern: re.Pattern | None
    reason: str
    transient: bool
    commands: frozenset | None
    message: str | None

    def matches(self, operation: str, status: int, text: str) -> bool:
        if self.commands is not None and operation not in self.commands:
            return False
        if (self.statuses or self.status_classes) and not (
            status in self.statuses or status // 100 in self.status_classes
        ):
            return False
        return self.pattern is None or bool(self.pattern.search(text))


def config_error(slug: str, key: str, problem: str) -> ImproperlyConfigured:
    return ImproperlyConfigured(f"Destination {slug}: settings.{key} {problem}.")


def parse_base_url(slug: str, value) -> str:
    parts = urlsplit(value) if isinstance(value, str) else None
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
        raise config_error(slug, "base_url", f"must be an http(s) URL, not {value!r}")
    if parts.username or parts.password or parts.query or parts.fragment:
        raise config_error(
            slug,
            "base_url",
            "must not contain a user name, password, query or fragment",
        )
    return value.rstrip("/")


def parse_timeout(slug: str, value) -> float:
    if value is None:
        return DEFAULT_TIMEOUT
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        raise config_error(
            slug, "timeout", f"must be a positive number of seconds, not {value!r}"
        )
    return float(value)


def parse_command(slug: str, name: str, raw) -> CommandSpec:
    key = f"commands.{name}"
    if not isinstance(raw, dict):
        raise config_error(slug, key, "must be an object with method and path")
    method = str(raw.get("method", "")).upper()
    if method not in METHODS:
        problem = f"must be one of {', '.join(METHODS)}"
        raise config_error(slug, f"{key}.method", problem)
    path = raw.get("path")
    if not (isinstance(path, str) and path.startswith("/")):
        raise config_error(slug, f"{key}.path", "must be a string that starts with /")

    kind = name if name in OPERATIONS else "command"
    response = parse_response(slug, key, kind, raw.get("response", {}))
    for option in ("match", "state_map"):
        check_string_map(slug, f"{key}.{option}", raw.get(option, {}))
    return CommandSpec(
        name=name,
        method=method,
        path=path,
        body=raw.get("body"),
        response=response,
        match=dict(raw.get("match", {})),
        state_map=dict(raw.get("state_map", {})),
    )


def parse_response(slug: str, key: str, kind: str, response) -> dict:
    """Check ``response`` paths and merge them over the defaults for ``kind``."""
    if not isinstance(response, dict):
        raise config_error(slug, f"{key}.response", "must map names to dotted paths")
    unknown = set(response) - RESPONSE_KEYS[kind]
    if unknown:
        problem = f"has unknown keys {sorted(unknown)}"
        raise config_error(slug, f"{key}.response", problem)
    paths = {name: value for name, value in response.items() if name != "data"}
    check_string_map(slug, f"{key}.response", paths)
    check_string_map(slug, f"{key}.response.data", response.get("data", {}))

    defaults = {}
    if kind in ("command", "find_existing"):
        defaults = DEFAULT_RESPONSE
    elif kind == "fetch_invoice":
        defaults = DEFAULT_INVOICE_RESPONSE
    return {**defaults, **response}


def check_string_map(slug: str, key: str, value) -> None:
    if not isinstance(value, dict) or not all(
        isinstance(v, str) for v in value.values()
    ):
        raise config_error(slug, key, "must map names to strings")


def parse_commands(slug: str, raw) -> dict:
    if not isinstance(raw, dict) or not raw:
        raise config_error(
            slug, "commands", "must be an object with one entry per command"
        )
    if "find_existing" not in raw:
        raise config_error(
            slug,
            "commands.find_existing",
            "is missing; it is required because a retry after a lost response "
            "must find the document already written",
        )
    if not set(raw) - set(OPERATIONS):
        raise config_error(slug, "commands", "needs at least one command type")
    return {name: parse_command(slug, name, spec) for name, spec in raw.items()}


def parse_statuses(slug: str, key: str, raw) -> tuple[frozenset, frozenset]:
    if raw is None:
        items = []
    elif isinstance(raw, list):
        items = raw
    else:
        items = [raw]
    statuses, classes = set(), set()
    for item in items:
        if isinstance(item, int) and not isinstance(item, bool) and 100 <= item <= 599:
            statuses.add(item)
        elif isinstance(item, str) and re.fullmatch(r"[1-5]xx", item):
            classes.add(int(item[0]))
        else:
            raise config_error(
                slug, key, f"has {item!r}, which is not a status or a class like 4xx"
            )
    return frozenset(statuses), frozenset(classes)


def parse_rule(slug: str, index: int, raw) -> ErrorRule:
    key = f"errors[{index}]"
    if not isinstance(raw, dict):
        raise config_error(slug, key, "must be an object")
    if raw.get("reason") not in REASONS:
        raise config_error(
            slug, f"{key}.reason", f"must be one of {', '.join(REASONS)}"
        )
    statuses, classes = parse_statuses(slug, f"{key}.status", raw.get("status"))
    pattern = raw.get("body_pattern")
    try:
        compiled = re.compile(pattern, re.IGNORECASE) if pattern else None
    except (re.error, TypeError) as exc:
        raise config_error(
            slug, f"{key}.body_pattern", f"is not a regular expression: {exc}"
        ) from None
    commands = raw.get("commands")
    return ErrorRule(
        statuses=statuses,
        status_classes=classes,
        pattern=compiled,
        reason=raw["reason"],
        transient=bool(raw.get("transient", False)),
        commands=None if commands is None else frozenset(commands),
        message=raw.get("message"),
    )


def parse_rules(slug: str, raw) -> list[ErrorRule]:
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise config_error(slug, "errors", "must be a list of rules")
    return [parse_rule(slug, index, rule) for index, rule in enumerate(raw)]


# Templates


class TemplateError(ValueError):
    pass


def lookup(data, dotted: str, default=MISSING):
    """Return the value at a dotted path such as ``lines.0.sku``."""
    value = data
    for part in dotted.split("."):
        if isinstance(value, dict) and part in value:
            value = value[part]
        elif isinstance(value, list) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        elif default is not MISSING:
            return default
        else:
            raise TemplateError(f"{dotted} has no value")
    return value


def render_body(template, context: dict):
    """Replace ``{{ name }}`` placeholders in a JSON template; nothing is evaluated."""
    if isinstance(template, dict) and "$each" in template:
        return _render_each(template, context)
    if isinstance(template, dict):
        rendered = {}
        for key, value in template.items():
            result = render_body(value, context)
            if result is not MISSING:
                rendered[key] = result
        return rendered
    if isinstance(template, list):
        return [
            item
            for item in (render_body(v, context) for v in template)
            if item is not MISSING
        ]
    if isinstance(template, str):
        return _render_string(template, context)
    return template


def _render_each(template: dict, context: dict) -> list:
    items = lookup(context, template["$each"])
    if not isinstance(items, list):
        raise TemplateError(f"{template['$each']} is not a list")
    name = template.get("as", "item")
    return [
        render_body(template.get("item"), {**context, name: item}) for item in items
    ]


def _render_string(template: str, context: dict):
    whole = WHOLE_PLACEHOLDER.match(template)
    if whole:
        value = lookup(context, whole.group(1), None if whole.group(2) else MISSING)
        return MISSING if value is None and whole.group(2) else copy.deepcopy(value)
    return INLINE_PLACEHOLDER.sub(
        lambda m: _scalar_text(lookup(context, m.group(1)), m.group(1)), template
    )


def _scalar_text(value, name: str) -> str:
    if isinstance(value, dict | list) or value is None:
        raise TemplateError(
            f"{name} is not a single value and cannot be put inside text"
        )
    return str(value)


def render_path(template: str, context: dict) -> str:
    return PATH_PLACEHOLDER.sub(
        lambda m: quote(_scalar_text(lookup(context, m.group(1)), m.group(1)), safe=""),
        template,
    )


def plain(value):
    """Convert Decimals from parsed responses to strings so results store as JSON."""
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [plain(v) for v in value]
    return value
