"""Count and time SQL statements per pipeline step, and profile a batch.

Each step is a function of the pipeline, wrapped for the duration of a
``StepCounter`` block. A statement counts towards the innermost step that
is running, so a step's figures exclude the steps it calls.
"""

import cProfile
import importlib
import io
import pstats
import re
import time
from collections import Counter, defaultdict
from contextlib import ExitStack, contextmanager

# (module, attribute, step label). A class is named "module:Class".
STEPS = [
    ("syncflows.services.receive", "receive", "receive: verify, parse, store, normalise"),
    ("syncflows.services.pipeline", "load_config", "pipeline: load_config"),
    ("syncflows.services.pipeline", "process_change", "pipeline: lock, load, mark processed"),
    ("syncflows.services.pipeline", "_match_and_run", "pipeline: match triggers"),
    ("syncflows.services.pipeline", "run_brief", "pipeline: transform, validate, route"),
    ("syncflows.services.pipeline", "load_children", "pipeline: load_children"),
    ("syncflows.services.pipeline", "enqueue_command", "pipeline: outbox enqueue"),
    ("syncflows.services.pipeline", "report_resolution", "pipeline: resolution hook"),
    ("syncflows.services.dispatch", "dispatch_due", "dispatch: loop"),
    ("syncflows.services.dispatch", "claim", "dispatch: claim"),
    ("syncflows.services.dispatch", "run_command", "dispatch: load command"),
    ("syncflows.services.dispatch", "check_dispatch_guards", "dispatch: guards"),
    ("syncflows.adapters.sandbox:SandboxAdapter", "find_existing", "sandbox: find_existing"),
    ("syncflows.adapters.sandbox:SandboxAdapter", "preflight", "sandbox: preflight"),
    ("syncflows.adapters.sandbox:SandboxAdapter", "execute", "sandbox: execute"),
    ("syncflows.services.dispatch", "_succeed", "dispatch: record success"),
    ("syncflows.services.dispatch", "report_success", "dispatch: success hook"),
]  # fmt: skip

_TABLE = r'"?([A-Za-z_][A-Za-z0-9_]*)"?'
_PATTERNS = [
    ("insert", re.compile(r"^\s*INSERT\s+INTO\s+" + _TABLE, re.I)),
    ("update", re.compile(r"^\s*UPDATE\s+" + _TABLE, re.I)),
    ("delete", re.compile(r"^\s*DELETE\s+FROM\s+" + _TABLE, re.I)),
    ("select", re.compile(r"^\s*SELECT\b.*?\bFROM\s+" + _TABLE, re.I | re.S)),
]


def classify(sql: str) -> tuple[str, str]:
    """Return the statement's verb and its first table, such as ("select", "syncflows_command")."""
    head = sql.lstrip()[:20].upper()
    if head.startswith(("SAVEPOINT", "RELEASE SAVEPOINT", "ROLLBACK TO")):
        return "savepoint", ""
    for verb, pattern in _PATTERNS:
        match = pattern.match(sql)
        if match:
            return verb, match.group(1)
    return head.split(" ", 1)[0].lower() or "other", ""


class StepCounter:
    """A ``connection.execute_wrapper`` that attributes statements to steps."""

    def __init__(self):
        self.stack = ["other"]
        self.statements = Counter()  # (step, verb, table) -> count
        self.sql_seconds = defaultdict(float)  # step -> seconds waiting on SQL
        self.commits = Counter()  # step -> COMMITs sent
        self.calls = Counter()  # step -> calls of the step function

    def __call__(self, execute, sql, params, many, context):
        step = self.stack[-1]
        self.statements[(step, *classify(sql))] += 1
        started = time.perf_counter()
        try:
            return execute(sql, params, many, context)
        finally:
            self.sql_seconds[step] += time.perf_counter() - started

    def _wrap(self, function, label):
        counter = self

        def wrapper(*args, **kwargs):
            counter.stack.append(label)
            counter.calls[label] += 1
            try:
                return function(*args, **kwargs)
            finally:
                counter.stack.pop()

        wrapper.__wrapped__ = function
        return wrapper

    @contextmanager
    def active(self):
        """Wrap every step function and count the default connection's statements."""
        from django.db import connection

        with ExitStack() as stack:
            for owner_name, attribute, label in STEPS:
                owner = _resolve(owner_name)
                original = getattr(owner, attribute, None)
                if original is None:
                    continue  # a step this version of the pipeline does not have
                setattr(owner, attribute, self._wrap(original, label))
                stack.callback(setattr, owner, attribute, original)
            original_commit = connection.commit

            def commit():
                self.commits[self.stack[-1]] += 1
                return original_commit()

            connection.commit = commit
            stack.callback(delattr, connection, "commit")
            stack.enter_context(connection.execute_wrapper(self))
            yield self

    def table(self, events: int) -> list[tuple[str, float, float, float, str]]:
        """Return (step, statements per event, commits per event, SQL ms per event,
        the statements by verb and table), busiest step first."""
        by_step = defaultdict(Counter)
        for (step, verb, table), count in self.statements.items():
            by_step[step][f"{verb} {table}".strip()] += count
        rows = []
        for step in set(by_step) | set(self.commits):
            total = sum(by_step[step].values())
            detail = ", ".join(
                f"{name} {count / events:.2f}" for name, count in by_step[step].most_common(6)
            )
            rows.append(
                (
                    step,
                    total / events,
                    self.commits[step] / events,
                    1000 * self.sql_seconds[step] / events,
                    detail,
                )
            )
        rows.sort(key=lambda row: -row[1])
        return rows


def _resolve(owner_name: str):
    module_name, _, class_name = owner_name.partition(":")
    module = importlib.import_module(module_name)
    return getattr(module, class_name) if class_name else module


def print_steps(counter: StepCounter, events: int, title: str) -> float:
    """Print the per-step table; return the statements per event in all."""
    rows = counter.table(events)
    total = sum(row[1] for row in rows)
    commits = sum(row[2] for row in rows)
    sql_ms = sum(row[3] for row in rows)
    print(
        f"{title}: {total:.1f} statements, {commits:.1f} commits and "
        f"{sql_ms:.2f} ms waiting on SQL per event ({events} events)",
        flush=True,
    )
    print(f"  {'step':<42} {'stmts':>6} {'commit':>6} {'sql ms':>7}  by statement", flush=True)
    for step, statements, step_commits, step_ms, detail in rows:
        print(
            f"  {step:<42} {statements:6.2f} {step_commits:6.2f} {step_ms:7.3f}  {detail}",
            flush=True,
        )
    return total


def profile(function, *args, top: int = 10) -> str:
    """Run ``function(*args)`` under cProfile; return the top functions by
    cumulative time, as pstats prints them."""
    profiler = cProfile.Profile()
    profiler.enable()
    try:
        function(*args)
    finally:
        profiler.disable()
    output = io.StringIO()
    stats = pstats.Stats(profiler, stream=output)
    stats.sort_stats("cumulative").print_stats(top)
    return output.getvalue()
