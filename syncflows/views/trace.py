"""The trace page: every step one CRM record took on its way to the ERP."""

import json

from django.shortcuts import render
from django.utils.cache import patch_vary_headers
from django.utils.dateparse import parse_datetime
from django.views.decorators.http import require_GET

from syncflows.models import Command
from syncflows.services.trace import build_trace, find_record_keys
from syncflows.views.lists import wants_partial

MAX_LISTED_KEYS = 50


def pretty_json(value) -> str:
    if value is None:
        return ""
    return json.dumps(value, indent=2, ensure_ascii=False, sort_keys=True, default=str)


@require_GET
def trace(request):
    query = request.GET.get("q", "").strip()
    keys = find_record_keys(query) if query else []
    chosen = choose_key(query, keys)
    context = {
        "nav": "trace",
        "query": query,
        "keys": keys[:MAX_LISTED_KEYS],
        "more_keys": max(len(keys) - MAX_LISTED_KEYS, 0),
        "record_key": chosen,
        "trace": prepare_trace(build_trace(chosen)) if chosen else None,
    }
    template = "syncflows/trace.html"
    if wants_partial(request):
        template = "syncflows/partials/trace_results.html"
    response = render(request, template, context)
    patch_vary_headers(response, ["HX-Request"])
    return response


def choose_key(query: str, keys: list[str]) -> str | None:
    """Return the record key to show: the only match, or an exact one."""
    if len(keys) == 1:
        return keys[0]
    return query if query in keys else None


def prepare_trace(trace: dict) -> dict:
    """Add the indented JSON and parsed times that the template shows."""
    record = trace.get("record")
    entries = [prepare_entry(entry) for entry in trace.get("entries", [])]
    state_labels = dict(Command.State.choices)
    commands = [
        {
            **command,
            "state_label": state_labels.get(command.get("state"), command.get("state")),
            "payload_json": pretty_json(command.get("payload")),
        }
        for command in trace.get("commands", [])
    ]
    cases = [
        {**case, "state_label": str(case.get("state", "")).capitalize()}
        for case in trace.get("cases", [])
    ]
    return {
        "record": record,
        "record_state_json": pretty_json(record.get("state")) if record else "",
        "entries": entries,
        "commands": commands,
        "cases": cases,
    }


def prepare_entry(entry: dict) -> dict:
    created_at = entry.get("created_at")
    if isinstance(created_at, str):
        created_at = parse_datetime(created_at)
    return {
        **entry,
        "created_at": created_at,
        "before_json": pretty_json(entry.get("payload_before")),
        "after_json": pretty_json(entry.get("payload_after")),
    }
