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
import threading
import time
from collections import Counter, defaultdict
from contextlib import ExitStack, contextmanager

PIPELINE = "syncflows.services.pipeline"
DISPATCH = "syncflows.services.dispatch"
SANDBOX = "syncflows.adapters.sandbox:SandboxAdapter"

# (module, attribute, step label). A class is named "module:Class".
STEPS = [
    ("syncflows.services.receive", "receive", "receive: verify, parse, store"),
    (PIPELINE, "load_config", "pipeline: load_config"),
    (PIPELINE, "process_change", "pipeline: lock, load, mark processed"),
    (PIPELINE, "_match_and_run", "pipeline: match triggers"),
    (PIPELINE, "run_brief", "pipeline: transform, validate, route"),
    (PIPELINE, "load_children", "pipeline: load_children"),
    (PIPELINE, "enqueue_command", "pipeline: outbox enqueue"),
    (PIPELINE, "report_resolution", "pipeline: resolution hook"),
    (DISPATCH, "dispatch_due", "dispatch: loop"),
    (DISPATCH, "claim", "dispatch: claim"),
    (DISPATCH, "run_command", "dispatch: load command"),
    (DISPATCH, "check_dispatch_guards", "dispatch: guards"),
    (SANDBOX, "find_existing", "sandbox: find_existing"),
    (SANDBOX, "preflight", "sandbox: preflight"),
    (SANDBOX, "execute", "sandbox: execute"),
    (DISPATCH, "_succeed", "dispatch: record success"),
    (DISPATCH, "report_success", "dispatch: success hook"),
]

_TABLE = r'"?([A-Za-z_][A-Za-z0-9_]*)"?'
_PATTERNS = [
    ("insert", re.compile(r"^\s*INSERT\s+INTO\s+" + _TABLE, re.I)),
    ("update", re.compile(r"^\s*UPDATE\s+" + _TABLE, re.I)),
    ("delete", re.compile(r"^\s*DELETE\s+FROM\s+" + _TABLE, re.I)),
    ("select", re.compile(r"^\s*SELECT\b.*?\bFROM\s+" + _TABLE, re.I | re.S)),
]


def classify(sql: str) -> tuple[str, str]:
    """Return the statement's verb and first table, such as ("update", "auth_user")."""
    head = sql.lstrip()[:20].upper()
    if head.startswith(("SAVEPOINT", "RELEASE SAVEPOINT", "ROLLBACK TO")):
        return "savepoint", ""
    for verb, pattern in _PATTERNS:
        match = pattern.match(sql)
        if match:
            return verb, match.group(1)
    return head.split(" ", 1)[0].lower() or "other", ""


class StepCounter:
    """A ``connection.execute_wrapper`` that attributes statements to steps.

    It is installed on every connection that opens while it is active, so the
    dispatcher's threads are counted too. Each thread has its own step stack.
    """

    def __init__(self):
        self._local = threading.local()
        self._lock = threading.Lock()
        self._wrapped_connections = []
        self.statements = Counter()  # (step, verb, table) -> count
        self.sql_seconds = defaultdict(float)  # step -> seconds waiting on SQL
        self.step_seconds = defaultdict(float)  # step -> seconds inside the step
        self.commits = Counter()  # step -> COMMITs sent
        self.connects = Counter()  # step -> database connections opened

    @property
    def stack(self) -> list[str]:
        if not hasattr(self._local, "stack"):
            self._local.stack = ["other"]
        return self._local.stack

    def __call__(self, execute, sql, params, many, context):
        step = self.stack[-1]
        started = time.perf_counter()
        try:
            return execute(sql, params, many, context)
        finally:
            with self._lock:
                self.statements[(step, *classify(sql))] += 1
                self.sql_seconds[step] += time.perf_counter() - started

    def _wrap(self, function, label):
        counter = self

        def wrapper(*args, **kwargs):
            counter.stack.append(label)
            started = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                counter.stack.pop()
                with counter._lock:
                    counter.step_seconds[label] += time.perf_counter() - started

        wrapper.__wrapped__ = function
        return wrapper

    def _attach(self, connection) -> None:
        if self not in connection.execute_wrappers:
            connection.execute_wrappers.append(self)
            self._wrapped_connections.append(connection)

    def _on_connect(self, sender, connection, **kwargs):
        with self._lock:
            self.connects[self.stack[-1]] += 1
        self._attach(connection)

    @contextmanager
    def active(self):
        """Wrap every step function and count the statements of every connection."""
        from django.db import DEFAULT_DB_ALIAS, connections
        from django.db.backends.signals import connection_created

        connection = connections[DEFAULT_DB_ALIAS]

        with ExitStack() as stack:
            for owner_name, attribute, label in STEPS:
                owner = _resolve(owner_name)
                original = getattr(owner, attribute, None)
                if original is None:
                    continue  # a step this version of the pipeline does not have
                setattr(owner, attribute, self._wrap(original, label))
                stack.callback(setattr, owner, attribute, original)
            stack.enter_context(self._counting_commits(type(connection)))
            connection_created.connect(self._on_connect)
            stack.callback(connection_created.disconnect, self._on_connect)
            self._attach(connection)
            stack.callback(self._detach_all)
            yield self

    @contextmanager
    def _counting_commits(self, wrapper_class):
        own = "commit" in wrapper_class.__dict__
        original = wrapper_class.commit
        counter = self

        def commit(connection):
            with counter._lock:
                counter.commits[counter.stack[-1]] += 1
            return original(connection)

        wrapper_class.commit = commit
        try:
            yield
        finally:
            if own:
                wrapper_class.commit = original
            else:
                del wrapper_class.commit

    def _detach_all(self) -> None:
        for connection in self._wrapped_connections:
            if self in connection.execute_wrappers:
                connection.execute_wrappers.remove(self)
        self._wrapped_connections.clear()

    def table(self, events: int) -> list[tuple]:
        """Return (step, statements, commits, connections opened, SQL ms, step ms,
        the statements by verb and table) per event, busiest step first."""
        by_step = defaultdict(Counter)
        for (step, verb, table), count in self.statements.items():
            by_step[step][f"{verb} {table}".strip()] += count
        rows = []
        for step in set(by_step) | set(self.commits) | set(self.connects):
            total = sum(by_step[step].values())
            detail = ", ".join(
                f"{name} {count / events:.2f}"
                for name, count in by_step[step].most_common(6)
            )
            rows.append(
                (
                    step,
                    total / events,
                    self.commits[step] / events,
                    self.connects[step] / events,
                    1000 * self.sql_seconds[step] / events,
                    1000 * self.step_seconds[step] / events,
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
    connects = sum(row[3] for row in rows)
    sql_ms = sum(row[4] for row in rows)
    print(
        f"{title}: {total:.1f} statements, {commits:.1f} commits, {connects:.2f} new "
        f"connections and {sql_ms:.2f} ms waiting on SQL per event ({events} events)",
        flush=True,
    )
    print(
        f"  {'step':<40} {'stmts':>6} {'commit':>6} {'conn':>5} {'sql ms':>7} "
        f"{'step ms':>7}  statements by verb and table",
        flush=True,
    )
    for step, statements, step_commits, step_connects, sql, inside, detail in rows:
        print(
            f"  {step:<40} {statements:6.2f} {step_commits:6.2f} {step_connects:5.2f} "
            f"{sql:7.3f} {inside:7.2f}  {detail}",
            flush=True,
        )
    print(
        "  (step ms includes the steps it calls and, for the dispatch threads, "
        "runs in parallel; SQL ms includes the driver's own time)",
        flush=True,
    )
    return total


def profile(function, *args, top: int = 10) -> str:
    """Run ``function(*args)`` under cProfile; return the top functions by
    cumulative time and by own time, as pstats prints them."""
    profiler = cProfile.Profile()
    profiler.enable()
    try:
        function(*args)
    finally:
        profiler.disable()
    output = io.StringIO()
    stats = pstats.Stats(profiler, stream=output)
    stats.sort_stats("cumulative").print_stats(top)
    stats.sort_stats("tottime").print_stats(top)
    return output.getvalue()
