"""Brief pages: the list, the brief page, the draft editor and the approval queues.

Views read and render; every change goes through ``syncflows.services.briefs``,
which checks role, author and state and writes the audit trail.
"""

import difflib
import json
import logging
import re

from django import forms
from django.contrib import messages
from django.core.exceptions import PermissionDenied
from django.db.models import Exists, OuterRef, Prefetch
from django.http import Http404
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from meshline import roles
from meshline.expressions import ACCEPTANCE_VARIABLES, MAPPING_VARIABLES
from syncflows.models import (
    Approval,
    Brief,
    BriefAudit,
    BriefVersion,
    Command,
    ShadowDiff,
    SyncRun,
    SyntheticTest,
    Trigger,
)
from syncflows.services import briefs as lifecycle
from syncflows.services import shadow, synthetic
from syncflows.services.config import load_config
from syncflows.services.errors import ActionRefused
from syncflows.views.lists import paginate, render_list, wants_partial

logger = logging.getLogger(__name__)
State = BriefVersion.State
Side = Approval.Side
QUEUES = {
    "sales-ops": (Side.CRM, roles.SALES_OPS),
    "finance": (Side.ERP, roles.FINANCE),
}


def pretty(value) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False, sort_keys=True)


# The brief list.


def _annotated_versions(user):
    approved = Approval.objects.filter(
        version=OuterRef("pk"), decision="approve", withdrawn_at__isnull=True
    )
    edited = BriefAudit.objects.filter(
        version=OuterRef("pk"), actor_id=user.pk, action__in=["create", "edit"]
    )
    return (
        BriefVersion.objects.only(
            "id",
            "brief_id",
            "number",
            "state",
            "activated_at",
            "approved_at",
            "created_by_id",
            "canary_business_unit",
            "shadow_started_at",
        )
        .annotate(
            crm_ok=Exists(approved.filter(side=Side.CRM)),
            erp_ok=Exists(approved.filter(side=Side.ERP)),
            edited_by_viewer=Exists(edited),
        )
        .order_by("-number")
    )


def _describe(brief, user):
    """Attach the active and latest version and what waits on ``user``."""
    brief.active = next(
        (v for v in brief.version_list if v.state == State.ACTIVE), None
    )
    brief.latest = brief.version_list[0] if brief.version_list else None
    brief.waiting = []
    for version in brief.version_list:
        version.approved_sides = {
            s for s, ok in (("crm", version.crm_ok), ("erp", version.erp_ok)) if ok
        }
        version.author_ids = {version.created_by_id} | (
            {user.pk} if version.edited_by_viewer else set()
        )
        action = lifecycle.waiting_on(user, version)
        if action:
            brief.waiting.append((version, action))
    return brief


@require_GET
def brief_list(request):
    queryset = Brief.objects.select_related("owner").prefetch_related(
        Prefetch(
            "versions",
            queryset=_annotated_versions(request.user),
            to_attr="version_list",
        )
    )
    page = paginate(request, queryset)
    page.object_list = [_describe(brief, request.user) for brief in page.object_list]
    return render_list(
        request,
        template="syncflows/briefs/list.html",
        partial="syncflows/briefs/partials/table.html",
        context={"nav": "briefs", "page": page, **_queue_links(request.user)},
    )


def _queue_links(user) -> dict:
    return {
        "queue_sales_ops": roles.has_role(user, roles.SALES_OPS),
        "queue_finance": roles.has_role(user, roles.FINANCE),
    }


# The brief page.


def _brief(slug):
    return get_object_or_404(Brief.objects.select_related("owner"), slug=slug)


def _version(brief, number):
    return get_object_or_404(
        BriefVersion.objects.select_related("brief", "created_by"),
        brief=brief,
        number=number,
    )


def _focus(brief, versions, request):
    number = request.GET.get("v")
    if number and number.isdigit():
        chosen = next((v for v in versions if v.number == int(number)), None)
        if chosen is not None:
            return chosen
    for state in (State.IN_REVIEW, State.DRAFT, State.APPROVED, State.ACTIVE):
        chosen = next((v for v in versions if v.state == state), None)
        if chosen is not None:
            return chosen
    return versions[0] if versions else None


@require_GET
def brief_detail(request, slug):
    brief = _brief(slug)
    versions = list(
        brief.versions.select_related("created_by", "brief").prefetch_related(
            Prefetch("approvals", queryset=Approval.objects.select_related("user"))
        )
    )
    focus = _focus(brief, versions, request)
    context = {
        "nav": "briefs",
        "brief": brief,
        "versions": versions,
        "focus": focus,
        "policy": lifecycle.canary_policy(),
        "policy_text": lifecycle.CANARY_POLICY_TEXT[lifecycle.canary_policy()],
        "audit": BriefAudit.objects.filter(brief=brief).select_related(
            "actor", "version"
        )[:30],
        "trigger_changes": _trigger_changes(brief),
    }
    context.update(_diff_context(versions, focus, request))
    if focus is not None:
        context.update(_focus_context(request, focus))
    return render(request, "syncflows/briefs/detail.html", context)


def _focus_context(request, focus) -> dict:
    user = request.user
    run = synthetic.latest_run(focus)
    standing = [
        a
        for a in focus.approvals.all()
        if a.decision == "approve" and not a.withdrawn_at
    ]
    given = {a.side for a in standing}
    is_author = user.pk in lifecycle.authors(focus)
    in_review = focus.state == State.IN_REVIEW
    context = {
        "run": run,
        "by_keyword": synthetic.results_by_keyword(run),
        "shadow_diff": ShadowDiff.objects.filter(version=focus).first(),
        "standing": standing,
        "sign_off": [
            (
                "CRM side (Sales Ops)",
                next((a for a in standing if a.side == "crm"), None),
            ),
            (
                "ERP side (Finance)",
                next((a for a in standing if a.side == "erp"), None),
            ),
        ],
        "requested": _open_request(focus),
        "is_author": is_author,
        "can_approve_crm": in_review
        and not is_author
        and "crm" not in given
        and roles.has_role(user, roles.SALES_OPS),
        "can_approve_erp": in_review
        and not is_author
        and "erp" not in given
        and roles.has_role(user, roles.FINANCE),
        "can_request_changes": in_review
        and not is_author
        and roles.has_role(user, roles.SALES_OPS, roles.FINANCE),
        "can_edit": roles.can(user, "edit_brief"),
        "can_release": roles.can(user, "release_brief"),
        "needs_canary": focus.state == State.APPROVED and lifecycle.needs_canary(focus),
        "schema_changed": lifecycle.schema_changed(focus),
        "business_units": lifecycle.business_units(),
        "default_sample": shadow.DEFAULT_SAMPLE_SIZE,
    }
    if focus.is_canary:
        context["rates"] = canary_rates(focus)
    if focus.is_shadow or focus.shadow_results.exists():
        context["shadow_live"] = shadow.shadow_summary(focus)
    return context


def _open_request(version):
    """The latest request for changes while the version is a draft again."""
    if version.state != State.DRAFT:
        return None
    requests = [a for a in version.approvals.all() if a.decision == "request_changes"]
    return requests[-1] if requests else None


def _trigger_changes(brief):
    from syncflows.models import TriggerChange

    return TriggerChange.objects.filter(trigger__briefs=brief).select_related(
        "trigger", "created_by"
    )[:20]


def canary_rates(version) -> list[dict]:
    """Return success and exception rates of the canary and the active version
    since the canary started."""
    since = version.canary_started_at
    rows = [("Canary", version, version.canary_business_unit)]
    active = version.brief.active_version
    if active is not None:
        rows.append(("Active", active, "the other business units"))
    return [_rates(label, v, scope, since) for label, v, scope in rows]


def _rates(label, version, scope, since) -> dict:
    runs = SyncRun.objects.filter(brief_version=version, created_at__gte=since).exclude(
        state__in=[SyncRun.State.WAITING, SyncRun.State.SUPERSEDED]
    )
    commands = Command.objects.filter(brief_version=version, created_at__gte=since)
    total = runs.count()
    failed_runs = runs.filter(state=SyncRun.State.FAILED).count()
    succeeded = commands.filter(state=Command.State.SUCCEEDED).count()
    failed_commands = commands.filter(state=Command.State.FAILED).count()
    exceptions = failed_runs + failed_commands
    return {
        "label": label,
        "version": version,
        "scope": scope,
        "runs": total,
        "succeeded": succeeded,
        "exceptions": exceptions,
        "success_rate": _percent(succeeded, total),
        "exception_rate": _percent(exceptions, total),
    }


def _percent(part, whole) -> str:
    return "—" if not whole else f"{100 * part / whole:.1f} %"


# A readable diff between two versions.


def _diff_context(versions, focus, request) -> dict:
    if len(versions) < 2 or focus is None:
        return {"diff_sections": None}
    by_number = {v.number: v for v in versions}
    right = by_number.get(_int(request.GET.get("b")), focus)
    fallback = right.based_on_id and next(
        (v for v in versions if v.pk == right.based_on_id), None
    )
    default_left = fallback or next(
        (v for v in versions if v.number < right.number), versions[-1]
    )
    left = by_number.get(_int(request.GET.get("a")), default_left)
    return {
        "diff_left": left,
        "diff_right": right,
        "diff_sections": version_diff(left, right),
    }


def _int(value):
    return int(value) if value and str(value).isdigit() else None


def version_diff(left, right) -> list[dict]:
    """Sections of a line diff between two versions; unchanged parts are left out."""
    parts = [("Command type", left.command_type, right.command_type)]
    for name in sorted(set(left.mapping or {}) | set(right.mapping or {})):
        parts.append(
            (
                f"Mapping of {name}",
                (left.mapping or {}).get(name, ""),
                (right.mapping or {}).get(name, ""),
            )
        )
    parts += [
        ("Ready condition", left.ready_condition, right.ready_condition),
        ("Command schema", pretty(left.command_schema), pretty(right.command_schema)),
        ("Acceptance checks", pretty(left.acceptance), pretty(right.acceptance)),
        ("Read-back", pretty(left.read_back), pretty(right.read_back)),
    ]
    sections = []
    for title, before, after in parts:
        if before == after:
            continue
        lines = difflib.unified_diff(
            _readable_lines(before), _readable_lines(after), lineterm="", n=2
        )
        shown = [(_line_kind(line), line) for line in list(lines)[2:]]
        sections.append({"title": title, "lines": shown})
    return sections


def _readable_lines(text) -> list[str]:
    """Split text into lines; a one-line CEL expression breaks after each comma,
    so a diff shows the changed argument instead of the whole expression."""
    lines = str(text).splitlines()
    if len(lines) == 1 and len(lines[0]) > 80:
        return re.split(r"(?<=,) ", lines[0])
    return lines


def _line_kind(line: str) -> str:
    return {"+": "added", "-": "removed", "@": "hunk"}.get(line[:1], "same")


# The draft editor with "try it".


class JsonField(forms.CharField):
    """A textarea holding JSON; a syntax error names its line and column."""

    def __init__(self, *, kind, **kwargs):
        self.kind = kind
        super().__init__(
            widget=forms.Textarea(attrs={"rows": 12, "spellcheck": "false"}), **kwargs
        )

    def clean(self, value):
        text = super().clean(value)
        try:
            parsed = json.loads(text or ("{}" if self.kind is dict else "[]"))
        except json.JSONDecodeError as exc:
            raise forms.ValidationError(
                f"Invalid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}."
            ) from None
        if not isinstance(parsed, self.kind):
            raise forms.ValidationError(
                f"Expected a JSON {'object' if self.kind is dict else 'list'}."
            )
        return parsed


class VersionForm(forms.Form):
    command_type = forms.CharField(max_length=64)
    mapping = JsonField(
        kind=dict,
        help_text=(
            "Command field → CEL expression over record, children, event and connector."
        ),
    )
    command_schema = JsonField(
        kind=dict,
        label="Command schema",
        help_text=(
            "JSON Schema the command must satisfy; amounts are strings with a pattern."
        ),
    )
    acceptance = JsonField(
        kind=list,
        required=False,
        label="Acceptance checks",
        help_text=(
            'A list of {"name", "expression", "message"}; each expression must be true.'
        ),
    )
    ready_condition = forms.CharField(
        required=False,
        widget=forms.Textarea(attrs={"rows": 2}),
        help_text="Optional CEL; while false the run waits for more changes.",
    )
    triggers = forms.ModelMultipleChoiceField(
        queryset=Trigger.objects.all(),
        required=False,
        help_text="The triggers this version runs on.",
    )
    comment = forms.CharField(
        required=False,
        max_length=500,
        help_text="What this edit changes, for the reviewers.",
    )

    def clean_mapping(self):
        mapping = self.cleaned_data["mapping"]
        problems = []
        for name, expression in mapping.items():
            if not isinstance(expression, str):
                problems.append(f"{name}: the expression must be a string.")
                continue
            problems += [
                f"{name}: {p}" for p in lifecycle.check(expression, MAPPING_VARIABLES)
            ]
        if problems:
            raise forms.ValidationError(problems)
        return mapping

    def clean_acceptance(self):
        checks = self.cleaned_data["acceptance"] or []
        problems = []
        for index, check in enumerate(checks, start=1):
            if not isinstance(check, dict) or not check.get("expression"):
                problems.append(f'Check {index} needs an "expression".')
                continue
            allowed = ACCEPTANCE_VARIABLES | {"connector"}
            problems += [
                f"{check.get('name', index)}: {p}"
                for p in lifecycle.check(check["expression"], allowed)
            ]
        if problems:
            raise forms.ValidationError(problems)
        return checks

    def clean_command_schema(self):
        schema = self.cleaned_data["command_schema"]
        problems = lifecycle._schema_problems(schema)
        if problems:
            raise forms.ValidationError(problems)
        return schema


def _initial(version) -> dict:
    return {
        "command_type": version.command_type,
        "mapping": pretty(version.mapping),
        "command_schema": pretty(version.command_schema),
        "acceptance": pretty(version.acceptance),
        "ready_condition": version.ready_condition,
        "triggers": list(version.triggers.all()) or list(version.brief.triggers.all()),
    }


def _try_sources(brief):
    changes = shadow.matched_changes(brief, 20)
    tests = list(brief.synthetic_tests.all())
    return changes, tests


@require_http_methods(["GET", "POST"])
def version_edit(request, slug, number):
    brief = _brief(slug)
    version = _version(brief, number)
    if not roles.can(request.user, "edit_brief"):
        raise PermissionDenied("Editing a brief needs the Sales Ops or Admin role.")
    form = VersionForm(request.POST or None, initial=_initial(version))
    action = request.POST.get("action", "save")
    try_result = None
    if request.method == "POST" and form.is_valid() and action == "save":
        return _save(request, version, form)
    if request.method == "POST" and action == "try":
        try_result = try_it(request, version, form)
        if wants_partial(request):
            return render(request, "syncflows/briefs/partials/try.html", {"try": try_result})
    changes, tests = _try_sources(brief)
    context = {
        "nav": "briefs",
        "brief": brief,
        "version": version,
        "form": form,
        "try": try_result,
        "changes": changes,
        "tests": tests,
        "run": synthetic.latest_run(version) if version.state == State.DRAFT else None,
    }
    context["by_keyword"] = synthetic.results_by_keyword(context["run"])
    return render(request, "syncflows/briefs/edit.html", context)


def _save(request, version, form):
    data = form.cleaned_data
    changes = {
        name: data[name]
        for name in (
            "command_type",
            "mapping",
            "command_schema",
            "acceptance",
            "ready_condition",
        )
    }
    try:
        draft, run = lifecycle.save_version(
            version,
            changes,
            acting_user=request.user,
            trigger_ids=[t.pk for t in data["triggers"]],
            comment=data["comment"],
        )
    except ActionRefused as refusal:
        messages.error(request, refusal.message)
        return redirect("syncflows:brief-detail", version.brief.slug)
    text = f"Saved v{draft.number} as a draft."
    if run is not None:
        text += f" Synthetic tests: {run.passed} passed, {run.failed} failed."
    (messages.warning if run is not None and run.failed else messages.success)(
        request, text
    )
    return redirect("syncflows:version-edit", version.brief.slug, draft.number)


def try_it(request, version, form) -> dict:
    """Map one stored event or example payload with the form's unsaved version."""
    if not form.is_valid():
        errors = [
            f"{form.fields[name].label or name}: {' '.join(e)}"
            for name, e in form.errors.items()
        ]
        return {
            "error": "The draft has errors: " + " ".join(errors),
            "reason": "schema_invalid",
        }
    data = form.cleaned_data
    candidate = BriefVersion(
        brief=version.brief,
        number=version.number,
        command_type=data["command_type"],
        mapping=data["mapping"],
        command_schema=data["command_schema"],
        acceptance=data["acceptance"],
        ready_condition=data["ready_condition"],
    )
    source = request.POST.get("source", "")
    kind, _, ident = source.partition(":")
    config = load_config()
    if kind == "test":
        test = get_object_or_404(SyntheticTest, pk=_int(ident), brief=version.brief)
        outcome = synthetic.run_test(test, candidate, config)
        passed, verdict = synthetic.judge(test, outcome)
        return _outcome_dict(
            outcome, f"Example {test.name}", verdict=verdict, passed=passed
        )
    if kind == "change":
        change = next(
            (
                c
                for c in shadow.matched_changes(version.brief, 200)
                if c.pk == _int(ident)
            ),
            None,
        )
        if change is None:
            raise Http404("No such stored event for this brief.")
        outcome = shadow.dry_run(candidate, shadow.replay_variables(change), config)
        return _outcome_dict(outcome, f"Stored event of {change.record.record_key}")
    return {
        "error": "Choose a stored event or an example payload to try.",
        "reason": "",
    }


def _outcome_dict(outcome, source, **extra) -> dict:
    return {
        "source": source,
        "command": pretty(outcome.payload) if outcome.payload is not None else "",
        "reason": outcome.reason_code,
        "error": outcome.message,
        **extra,
    }


# Transitions.


def _comment(request) -> str:
    return request.POST.get("comment", "").strip()


ACTIONS = {
    "submit": lambda v, r: lifecycle.submit(v, acting_user=r.user, comment=_comment(r)),
    "approve-crm": lambda v, r: lifecycle.approve(
        v, side="crm", acting_user=r.user, comment=_comment(r)
    ),
    "approve-erp": lambda v, r: lifecycle.approve(
        v, side="erp", acting_user=r.user, comment=_comment(r)
    ),
    "request-changes": lambda v, r: lifecycle.request_changes(
        v, acting_user=r.user, comment=_comment(r)
    ),
    "shadow-start": lambda v, r: lifecycle.start_shadow(
        v, acting_user=r.user, comment=_comment(r)
    ),
    "shadow-stop": lambda v, r: lifecycle.stop_shadow(
        v, acting_user=r.user, comment=_comment(r)
    ),
    "canary-start": lambda v, r: lifecycle.start_canary(
        v,
        business_unit=r.POST.get("business_unit", ""),
        acting_user=r.user,
        comment=_comment(r),
    ),
    "canary-stop": lambda v, r: lifecycle.stop_canary(
        v, acting_user=r.user, comment=_comment(r)
    ),
    "activate": lambda v, r: lifecycle.activate(
        v, acting_user=r.user, comment=_comment(r)
    ),
    "rollback": lambda v, r: lifecycle.rollback(
        v, acting_user=r.user, reason=_comment(r)
    ),
    "new-draft": lambda v, r: lifecycle.create_draft(
        v.brief, acting_user=r.user, from_version=v
    ),
}
DONE = {
    "submit": "v{n} is in review. Sales Ops and Finance were notified.",
    "approve-crm": "You approved the CRM side of v{n}.",
    "approve-erp": "You approved the ERP side of v{n}.",
    "request-changes": "v{n} went back to its author with your comment.",
    "shadow-start": "v{n} runs in shadow mode: its commands are "
    "stored and diffed, never sent.",
    "shadow-stop": "v{n} no longer runs in shadow mode.",
    "canary-start": "v{n} runs as a canary.",
    "canary-stop": "The canary of v{n} stopped; every business "
    "unit runs the active version.",
    "activate": "v{n} is active for every business unit.",
    "rollback": "v{n} is active again.",
    "new-draft": "Draft v{n} created.",
}


@require_POST
def version_action(request, slug, number, action):
    brief = _brief(slug)
    version = _version(brief, number)
    if action == "shadow-diff":
        return _shadow_diff(request, version)
    if action == "run-tests":
        run = synthetic.run_synthetic_tests(version)
        messages.info(
            request,
            "No synthetic tests yet."
            if run is None
            else f"Synthetic tests: {run.passed} passed, {run.failed} failed.",
        )
        return redirect(_detail_url(brief, version))
    handler = ACTIONS.get(action)
    if handler is None:
        raise Http404(f"Unknown action {action!r}.")
    try:
        result = handler(version, request)
    except (ActionRefused, PermissionDenied) as refusal:
        text = getattr(refusal, "message", None) or str(refusal)
        logger.info(
            "Action %s on brief version %s rejected: %s", action, version.pk, text
        )
        messages.error(request, text)
        return redirect(_detail_url(brief, version))
    messages.success(request, DONE[action].format(n=result.number))
    if action == "new-draft":
        return redirect("syncflows:version-edit", brief.slug, result.number)
    return redirect(_detail_url(brief, result))


def _shadow_diff(request, version):
    size = _int(request.POST.get("sample_size")) or shadow.DEFAULT_SAMPLE_SIZE
    diff = shadow.run_shadow_diff(version, sample_size=size, acting_user=request.user)
    summary = diff.summary
    messages.success(
        request,
        f"Shadow diff over {summary['compared']} records: "
        f"{summary['differing']} would change.",
    )
    return redirect(_detail_url(version.brief, version) + "#shadow-diff")


def _detail_url(brief, version) -> str:
    return reverse("syncflows:brief-detail", args=[brief.slug]) + f"?v={version.number}"


# Approval queues.


@require_GET
def approval_queue(request, queue):
    if queue not in QUEUES:
        raise Http404("No such queue.")
    side, role = QUEUES[queue]
    given = Approval.objects.filter(
        version=OuterRef("pk"), side=side, decision="approve", withdrawn_at__isnull=True
    )
    versions = (
        BriefVersion.objects.filter(state=State.IN_REVIEW)
        .annotate(side_done=Exists(given))
        .filter(side_done=False)
        .select_related("brief", "created_by")
        .order_by("submitted_at", "pk")
    )
    rows = []
    for version in versions:
        run = synthetic.latest_run(version)
        rows.append(
            {
                "version": version,
                "run": run,
                "diff": ShadowDiff.objects.filter(version=version).first(),
                "mine": request.user.pk in lifecycle.authors(version),
            }
        )
    context = {
        "nav": "briefs",
        "queue": queue,
        "role": role,
        "side": side,
        "rows": rows,
        "is_member": roles.has_role(request.user, role),
    }
    return render(request, "syncflows/briefs/queue.html", context)


# Trigger changes.


class TriggerChangeForm(forms.Form):
    condition = forms.CharField(
        widget=forms.Textarea(attrs={"rows": 3}),
        help_text="CEL over record, previous, changed and event.",
    )
    reason = forms.CharField(
        required=False,
        widget=forms.Textarea(attrs={"rows": 2}),
        help_text="Why the condition changes, for the reviewers.",
    )


@require_http_methods(["GET", "POST"])
def trigger_change(request, slug):
    trigger = get_object_or_404(Trigger, slug=slug)
    change = trigger.changes.filter(state__in=[State.DRAFT, State.IN_REVIEW]).first()
    form = TriggerChangeForm(
        request.POST or None,
        initial={"condition": change.condition if change else trigger.condition},
    )
    if request.method == "POST":
        return _trigger_post(request, trigger, change, form)
    context = {
        "nav": "briefs",
        "trigger": trigger,
        "change": change,
        "form": form,
        "history": trigger.changes.select_related("created_by").prefetch_related(
            "approvals__user"
        ),
        "can_edit": roles.can(request.user, "edit_brief"),
        "can_release": roles.can(request.user, "release_brief"),
        "briefs": trigger.briefs.all(),
    }
    return render(request, "syncflows/briefs/trigger.html", context)


TRIGGER_ACTIONS = {
    "submit": lambda c, r: lifecycle.submit_trigger_change(
        c, acting_user=r.user, comment=_comment(r)
    ),
    "approve-crm": lambda c, r: lifecycle.approve(
        c, side="crm", acting_user=r.user, comment=_comment(r)
    ),
    "approve-erp": lambda c, r: lifecycle.approve(
        c, side="erp", acting_user=r.user, comment=_comment(r)
    ),
    "request-changes": lambda c, r: lifecycle.request_changes(
        c, acting_user=r.user, comment=_comment(r)
    ),
    "activate": lambda c, r: lifecycle.activate_trigger_change(
        c, acting_user=r.user, comment=_comment(r)
    ),
    "rollback": lambda c, r: lifecycle.activate_trigger_change(
        c, acting_user=r.user, rollback_reason=_comment(r) or "Rolled back."
    ),
}


def _trigger_post(request, trigger, change, form):
    action = request.POST.get("action", "save")
    try:
        if action == "save":
            if not form.is_valid():
                messages.error(request, "Enter a condition.")
            else:
                lifecycle.propose_trigger_change(
                    trigger,
                    condition=form.cleaned_data["condition"],
                    reason=form.cleaned_data["reason"],
                    acting_user=request.user,
                )
                messages.success(request, "The trigger change is saved as a draft.")
        elif action in TRIGGER_ACTIONS:
            target = get_object_or_404(
                trigger.changes, pk=_int(request.POST.get("change"))
            )
            TRIGGER_ACTIONS[action](target, request)
            messages.success(request, f"Done: {action.replace('-', ' ')}.")
        else:
            raise Http404("Unknown action.")
    except (ActionRefused, PermissionDenied) as refusal:
        messages.error(request, getattr(refusal, "message", None) or str(refusal))
    return redirect("syncflows:trigger-change", trigger.slug)
