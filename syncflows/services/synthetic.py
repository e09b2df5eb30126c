"""Synthetic tests: example payloads run in dry-run against a brief version.

Each test maps its payload with the version, validates the command and runs
the destination adapter's ``preflight`` (validation without a write) inside
a savepoint that is rolled back. The outcome is compared with the expected
command (a subset of its fields) or the expected reason code.
"""

import logging
from collections import OrderedDict

from django.db import transaction

from syncflows.adapters import AdapterError, CommandData, get_adapter
from syncflows.models import BriefVersion, SyntheticResult, SyntheticRun
from syncflows.services.config import load_config
from syncflows.services.shadow import Outcome, _same, dry_run

logger = logging.getLogger(__name__)

DEFAULT_CONNECTOR = {
    "slug": "synthetic",
    "kind": "generic",
    "default_currency": "EUR",
    "business_unit": "",
    "region": "",
    "time_zone": "UTC",
}


def synthetic_variables(test, version) -> dict:
    """Build the mapping variables of a synthetic test, with defaults from the brief."""
    payload = test.payload or {}
    connector = {**_connector_defaults(version), **(payload.get("connector") or {})}
    trigger = _first_trigger(version)
    object_type = trigger.object_type if trigger else "deal"
    record_id = f"synthetic-{test.pk}"
    event = {
        "type": "synthetic",
        "change_type": "update",
        "connector": connector["slug"],
        "object_type": object_type,
        "record_id": record_id,
        "record_key": f"{connector['slug']}:{object_type}:{record_id}",
        "occurred_at": "2026-01-01T00:00:00+00:00",
        "revision": 1,
        **(payload.get("event") or {}),
    }
    from meshline.expressions import to_cel_value

    return {
        "record": to_cel_value(payload.get("record") or {}),
        "children": to_cel_value(payload.get("children") or {}),
        "event": event,
        "connector": connector,
    }


def _first_trigger(version):
    # An unsaved version (the editor's "try it") has no trigger binding yet.
    own = list(version.triggers.all()) if version.pk else []
    triggers = own or list(version.brief.triggers.all())
    return triggers[0] if triggers else None


def _connector_defaults(version) -> dict:
    trigger = _first_trigger(version)
    connector = trigger.connector if trigger else None
    if connector is None:
        return dict(DEFAULT_CONNECTOR)
    return {
        "slug": connector.slug,
        "kind": connector.kind,
        "default_currency": connector.default_currency,
        "business_unit": connector.business_unit,
        "region": connector.region,
        "time_zone": connector.time_zone,
    }


def run_test(test, version, config) -> Outcome:
    """Dry-run one synthetic test with ``version``, preflight included."""
    variables = synthetic_variables(test, version)
    outcome = dry_run(version, variables, config)
    if not outcome.ok:
        return outcome
    connector = variables["connector"]
    route = config.route_for(
        connector["business_unit"],
        connector["region"],
        variables["event"]["object_type"],
    )
    if route is None:
        return Outcome(
            payload=outcome.payload,
            reason_code="mapping_missing",
            message=(
                "No routing-table row matches this payload, so no "
                "destination can preflight it."
            ),
        )
    return _preflight(route.destination, version, outcome, test)


def _preflight(destination, version, outcome: Outcome, test) -> Outcome:
    command = CommandData(
        idempotency_key=f"synthetic:{test.pk}:{version.pk}",
        command_type=version.command_type,
        payload=outcome.payload,
        mode="dry_run",
        options={"create_missing_customers": version.brief.create_missing_customers},
    )
    adapter = get_adapter(destination)
    try:
        with transaction.atomic():
            adapter.preflight(command)
            transaction.set_rollback(True)
    except AdapterError as exc:
        return Outcome(
            payload=outcome.payload, reason_code=exc.reason_code, message=exc.message
        )
    except Exception as exc:
        error = adapter.classify(exc)
        return Outcome(
            payload=outcome.payload,
            reason_code=error.reason_code,
            message=error.message,
        )
    finally:
        adapter.close()
    return outcome


def judge(test, outcome: Outcome) -> tuple[bool, str]:
    """Compare an outcome with the test's expectation; return (passed, message)."""
    if test.expected_reason:
        if outcome.reason_code == test.expected_reason:
            return True, f"Stopped with {outcome.reason_code} as expected."
        got = outcome.reason_code or "a valid command"
        return (
            False,
            f"Expected the reason code {test.expected_reason}, got "
            f"{got}. {outcome.message}".strip(),
        )
    if outcome.reason_code:
        return (
            False,
            f"Expected a command, got {outcome.reason_code}: {outcome.message}",
        )
    mismatches = expected_mismatches(test.expected_command or {}, outcome.payload)
    if mismatches:
        return False, "; ".join(mismatches)
    return True, "The command matches the expected fields."


def expected_mismatches(expected, actual, path: str = "") -> list[str]:
    """List every place where ``actual`` does not contain ``expected``."""
    where = path or "command"
    if isinstance(expected, dict):
        if not isinstance(actual, dict):
            return [f"{where}: expected an object, got {actual!r}"]
        found = []
        for key, value in expected.items():
            found += expected_mismatches(
                value, actual.get(key), f"{path}.{key}" if path else key
            )
        return found
    if isinstance(expected, list):
        if not isinstance(actual, list) or len(actual) != len(expected):
            count = len(actual) if isinstance(actual, list) else "no"
            return [f"{where}: expected {len(expected)} items, got {count}"]
        found = []
        for index, (left, right) in enumerate(zip(expected, actual, strict=True)):
            found += expected_mismatches(left, right, f"{where}[{index + 1}]")
        return found
    if _same(expected, actual):
        return []
    return [f"{where}: expected {expected!r}, got {actual!r}"]


def run_synthetic_tests(version, *, cause=SyntheticRun.Cause.MANUAL, config=None):
    """Run every synthetic test of the version's brief; return the SyntheticRun.

    Returns None when the brief has no synthetic tests.
    """
    tests = list(version.brief.synthetic_tests.all())
    if not tests:
        return None
    config = config or load_config()
    run = SyntheticRun.objects.create(version=version, cause=cause)
    results = []
    for test in tests:
        outcome = run_test(test, version, config)
        passed, message = judge(test, outcome)
        results.append(
            SyntheticResult(
                run=run,
                test=test,
                passed=passed,
                reason_code=outcome.reason_code,
                message=message,
                command=outcome.payload,
            )
        )
    SyntheticResult.objects.bulk_create(results)
    run.passed = sum(result.passed for result in results)
    run.failed = len(results) - run.passed
    run.save(update_fields=["passed", "failed"])
    logger.info(
        "Synthetic run %s of %s (%s): %s passed, %s failed",
        run.pk,
        version,
        cause,
        run.passed,
        run.failed,
    )
    return run


def latest_run(version):
    return version.synthetic_runs.first()


def failing_tests_message(version) -> str:
    """Return why the version may not be submitted or approved, or "" if it may."""
    if not version.brief.synthetic_tests.exists():
        return ""
    run = latest_run(version)
    if run is None:
        return (
            f"The synthetic tests have not run on {version} yet. "
            "Save the draft to run them."
        )
    if run.failed:
        return (
            f"{run.failed} synthetic test(s) fail on {version}. Fix the mapping or "
            "the test, then save to run them again."
        )
    return ""


def results_by_keyword(run) -> list[tuple[str, list]]:
    """Group the run's results by the test's keyword, failing keywords first."""
    if run is None:
        return []
    groups: OrderedDict[str, list] = OrderedDict()
    for result in run.results.select_related("test"):
        groups.setdefault(result.test.keyword, []).append(result)
    return sorted(
        groups.items(), key=lambda item: (all(r.passed for r in item[1]), item[0])
    )


def run_nightly() -> int:
    """Run the synthetic tests of active and canary versions; return the run count."""
    versions = BriefVersion.objects.filter(state=BriefVersion.State.ACTIVE) | (
        BriefVersion.objects.exclude(canary_business_unit="")
    )
    config = load_config()
    count = 0
    for version in versions.select_related("brief").distinct():
        if run_synthetic_tests(
            version, cause=SyntheticRun.Cause.NIGHTLY, config=config
        ):
            count += 1
    logger.info("Nightly synthetic runs finished: %s versions", count)
    return count
