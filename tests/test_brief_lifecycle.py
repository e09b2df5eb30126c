"""Transitions of brief versions and trigger changes, allowed and refused by
role, author and state; withdrawal of approvals; the canary policy; rollback."""

import copy

import pytest
from django.core.exceptions import PermissionDenied

from meshline.roles import ADMIN, FINANCE, SALES_OPS, VIEWER
from syncflows.models import Approval, BriefAudit, BriefVersion, Route, TriggerVersion
from syncflows.services import briefs as lifecycle
from syncflows.services.errors import ActionRefused
from tests.conftest import make_user

pytestmark = pytest.mark.django_db


@pytest.fixture
def people(db):
    return {
        "author": make_user("sam.salesops", SALES_OPS),
        "sales": make_user("sally.salesops", SALES_OPS),
        "finance": make_user("fiona.finance", FINANCE),
        "both": make_user("bo.both", SALES_OPS, FINANCE),
        "viewer": make_user("vera.viewer", VIEWER),
        "admin": make_user("ada.admin", ADMIN),
    }


@pytest.fixture
def brief(demo):
    from syncflows.models import Brief

    return Brief.objects.get(slug="pipedrive-won-deals")


def draft_of(brief, people, **changes):
    draft = lifecycle.create_draft(brief, acting_user=people["author"])
    if changes:
        draft, _run = lifecycle.save_version(
            draft, changes, acting_user=people["author"]
        )
    return draft


def minor_mapping(brief):
    mapping = copy.deepcopy(brief.active_version.mapping)
    mapping["customer_po"] = '"PO-" + event.record_id'
    return mapping


def approved(brief, people, **changes):
    draft = draft_of(brief, people, **changes)
    lifecycle.submit(draft, acting_user=people["author"])
    lifecycle.approve(draft, side="crm", acting_user=people["sales"])
    return lifecycle.approve(draft, side="erp", acting_user=people["finance"])


def refresh(version):
    return BriefVersion.objects.get(pk=version.pk)


# Drafts.


def test_draft_copies_latest_version(brief, people):
    draft = draft_of(brief, people)
    active = brief.active_version
    assert draft.number == 2
    assert draft.state == "draft"
    assert draft.based_on_id == active.pk
    assert draft.mapping == active.mapping
    assert draft.command_schema == active.command_schema
    assert list(draft.triggers.values_list("slug", flat=True)) == ["pipedrive-deal-won"]
    entry = BriefAudit.objects.get(version=draft)
    assert (entry.action, entry.to_state, entry.actor) == (
        "create",
        "draft",
        people["author"],
    )


@pytest.mark.parametrize("who", ["finance", "viewer"])
def test_draft_rejected_for_role(brief, people, who):
    with pytest.raises(PermissionDenied):
        lifecycle.create_draft(brief, acting_user=people[who])


def test_second_draft_rejected(brief, people):
    draft_of(brief, people)
    with pytest.raises(ActionRefused, match="already a draft"):
        lifecycle.create_draft(brief, acting_user=people["sales"])


def test_edit_of_active_version_makes_draft(brief, people):
    active = brief.active_version
    before = copy.deepcopy(active.mapping)
    draft, _ = lifecycle.save_version(
        active, {"mapping": minor_mapping(brief)}, acting_user=people["author"]
    )
    assert draft.pk != active.pk
    assert (draft.number, draft.state) == (2, "draft")
    assert refresh(active).mapping == before
    assert refresh(active).state == "active"


def test_approved_version_is_immutable(brief, people):
    version = approved(brief, people, mapping=minor_mapping(brief))
    mapping = copy.deepcopy(version.mapping)
    mapping["customer_po"] = "null"
    draft, _ = lifecycle.save_version(
        version, {"mapping": mapping}, acting_user=people["sales"]
    )
    assert draft.number == 3
    assert draft.based_on_id == version.pk
    assert refresh(version).mapping["customer_po"] == '"PO-" + event.record_id'
    assert refresh(version).state == "approved"


def test_unknown_field_rejected(brief, people):
    draft = draft_of(brief, people)
    with pytest.raises(ValueError, match="state"):
        lifecycle.save_version(draft, {"state": "active"}, acting_user=people["author"])


# Review and approval.


def test_submit_notifies_reviewers(
    brief, people, mailoutbox, django_capture_on_commit_callbacks
):
    draft = draft_of(brief, people)
    with django_capture_on_commit_callbacks(execute=True):
        lifecycle.submit(draft, acting_user=people["author"], comment="Adds the PO.")
    assert refresh(draft).state == "in_review"
    assert len(mailoutbox) == 1
    recipients = sorted(mailoutbox[0].to)
    assert recipients == [
        "bo.both@example.com",
        "fiona.finance@example.com",
        "sally.salesops@example.com",
    ]
    assert "pipedrive-won-deals" not in mailoutbox[0].subject
    assert "Pipedrive won deals to sales orders v2" in mailoutbox[0].subject


def test_submit_rejected_outside_draft(brief, people):
    with pytest.raises(ActionRefused, match="is active"):
        lifecycle.submit(brief.active_version, acting_user=people["author"])


def test_submit_rejected_for_finance(brief, people):
    draft = draft_of(brief, people)
    with pytest.raises(PermissionDenied):
        lifecycle.submit(draft, acting_user=people["finance"])


def test_submit_rejected_with_bad_expression(brief, people):
    draft = draft_of(brief, people)
    BriefVersion.objects.filter(pk=draft.pk).update(
        mapping={**draft.mapping, "currency": "deal.currency"}
    )
    with pytest.raises(ActionRefused, match="Unknown variable 'deal'"):
        lifecycle.submit(draft, acting_user=people["author"])


def test_approval_needs_both_sides(
    brief, people, mailoutbox, django_capture_on_commit_callbacks
):
    draft = draft_of(brief, people)
    lifecycle.submit(draft, acting_user=people["author"])
    lifecycle.approve(draft, side="crm", acting_user=people["sales"], comment="CRM ok")
    assert refresh(draft).state == "in_review"
    with django_capture_on_commit_callbacks(execute=True):
        lifecycle.approve(draft, side="erp", acting_user=people["finance"])
    version = refresh(draft)
    assert version.state == "approved"
    assert version.approved_at is not None
    standing = lifecycle.standing_approvals(version)
    assert sorted((a.side, a.user.username) for a in standing) == [
        ("crm", "sally.salesops"),
        ("erp", "fiona.finance"),
    ]
    assert [m.to for m in mailoutbox] == [["sam.salesops@example.com"]]
    actions = list(
        BriefAudit.objects.filter(version=version)
        .order_by("id")
        .values_list("action", flat=True)
    )
    assert actions == ["create", "submit", "approve", "approve", "both_sides_approved"]


def test_author_cannot_approve(brief, people):
    draft = draft_of(brief, people)
    lifecycle.submit(draft, acting_user=people["author"])
    with pytest.raises(ActionRefused, match="cannot review it"):
        lifecycle.approve(draft, side="crm", acting_user=people["author"])


def test_editor_cannot_approve(brief, people):
    draft = draft_of(brief, people)
    lifecycle.save_version(
        draft, {"mapping": minor_mapping(brief)}, acting_user=people["sales"]
    )
    lifecycle.submit(draft, acting_user=people["author"])
    with pytest.raises(ActionRefused, match="cannot review it"):
        lifecycle.approve(draft, side="crm", acting_user=people["sales"])


@pytest.mark.parametrize(
    ("side", "who"),
    [("crm", "finance"), ("erp", "sales"), ("crm", "viewer"), ("erp", "admin")],
)
def test_side_needs_its_role(brief, people, side, who):
    draft = draft_of(brief, people)
    lifecycle.submit(draft, acting_user=people["author"])
    with pytest.raises(ActionRefused, match="Only"):
        lifecycle.approve(draft, side=side, acting_user=people[who])
    assert not Approval.objects.filter(version=draft).exists()


def test_one_person_cannot_approve_both_sides(brief, people):
    draft = draft_of(brief, people)
    lifecycle.submit(draft, acting_user=people["author"])
    lifecycle.approve(draft, side="crm", acting_user=people["both"])
    with pytest.raises(ActionRefused, match="two different people"):
        lifecycle.approve(draft, side="erp", acting_user=people["both"])
    assert refresh(draft).state == "in_review"


def test_same_side_twice_rejected(brief, people):
    draft = draft_of(brief, people)
    lifecycle.submit(draft, acting_user=people["author"])
    lifecycle.approve(draft, side="crm", acting_user=people["sales"])
    with pytest.raises(ActionRefused, match="already approved"):
        lifecycle.approve(draft, side="crm", acting_user=people["both"])


def test_approve_rejected_in_draft(brief, people):
    draft = draft_of(brief, people)
    with pytest.raises(ActionRefused, match="is draft"):
        lifecycle.approve(draft, side="crm", acting_user=people["sales"])


# Withdrawal of approvals.


def test_edit_during_review_withdraws(brief, people):
    draft = draft_of(brief, people)
    lifecycle.submit(draft, acting_user=people["author"])
    lifecycle.approve(draft, side="erp", acting_user=people["finance"])
    version, _ = lifecycle.save_version(
        draft, {"mapping": minor_mapping(brief)}, acting_user=people["author"]
    )
    assert version.pk == draft.pk
    assert version.state == "draft"
    approval = Approval.objects.get(version=draft)
    assert approval.withdrawn_at is not None
    assert approval.withdrawn_reason == "edited during review"
    assert list(lifecycle.standing_approvals(version)) == []


def test_new_draft_withdraws_review(brief, people):
    draft = draft_of(brief, people)
    lifecycle.submit(draft, acting_user=people["author"])
    lifecycle.approve(draft, side="crm", acting_user=people["sales"])
    newer = lifecycle.create_draft(
        brief, acting_user=people["author"], from_version=draft
    )
    assert newer.number == 3
    assert refresh(draft).state == "retired"
    assert Approval.objects.get(version=draft).withdrawn_reason == "replaced by v3"


def test_request_changes_withdraws(
    brief, people, mailoutbox, django_capture_on_commit_callbacks
):
    draft = draft_of(brief, people)
    lifecycle.submit(draft, acting_user=people["author"])
    lifecycle.approve(draft, side="crm", acting_user=people["sales"])
    with pytest.raises(ActionRefused, match="comment is required"):
        lifecycle.request_changes(draft, acting_user=people["finance"], comment=" ")
    with django_capture_on_commit_callbacks(execute=True):
        lifecycle.request_changes(
            draft, acting_user=people["finance"], comment="Round the PO."
        )
    assert refresh(draft).state == "draft"
    assert list(lifecycle.standing_approvals(draft)) == []
    assert mailoutbox[0].to == ["sam.salesops@example.com"]
    assert "Round the PO." in mailoutbox[0].body


def test_request_changes_rejected_for_author_and_viewer(brief, people):
    draft = draft_of(brief, people)
    lifecycle.submit(draft, acting_user=people["author"])
    with pytest.raises(ActionRefused, match="cannot review it"):
        lifecycle.request_changes(draft, acting_user=people["author"], comment="x")
    with pytest.raises(ActionRefused, match="Only Sales Ops or Finance"):
        lifecycle.request_changes(draft, acting_user=people["viewer"], comment="x")


# Release: the canary policy, activation and rollback.


def test_minor_edit_goes_straight_to_active(brief, people):
    old = brief.active_version
    version = approved(brief, people, mapping=minor_mapping(brief))
    assert lifecycle.needs_canary(version) is False
    lifecycle.activate(version, acting_user=people["finance"])
    assert refresh(version).state == "active"
    assert refresh(version).activated_at is not None
    assert refresh(old).state == "retired"
    assert brief.active_version.pk == version.pk


def schema_change(brief):
    schema = copy.deepcopy(brief.active_version.command_schema)
    schema["required"] = [*schema["required"], "close_date"]
    return schema


def test_schema_change_needs_canary(brief, people):
    Route.objects.create(
        business_unit="emea", destination=Route.objects.get().destination
    )
    version = approved(brief, people, command_schema=schema_change(brief))
    assert lifecycle.needs_canary(version) is True
    with pytest.raises(ActionRefused, match="canary for one business unit"):
        lifecycle.activate(version, acting_user=people["finance"])
    lifecycle.start_canary(version, business_unit="emea", acting_user=people["author"])
    lifecycle.activate(version, acting_user=people["finance"])
    version = refresh(version)
    assert version.state == "active"
    assert version.canary_business_unit == ""


@pytest.mark.parametrize(("policy", "needed"), [("always", True), ("never", False)])
def test_canary_policy_setting(brief, people, settings, policy, needed):
    settings.MESHLINE_CANARY_POLICY = policy
    minor = approved(brief, people, mapping=minor_mapping(brief))
    assert lifecycle.needs_canary(minor) is needed


def test_never_policy_skips_canary(brief, people, settings):
    settings.MESHLINE_CANARY_POLICY = "never"
    version = approved(brief, people, command_schema=schema_change(brief))
    lifecycle.activate(version, acting_user=people["finance"])
    assert refresh(version).state == "active"


def test_canary_needs_routing_unit(brief, people):
    version = approved(brief, people, mapping=minor_mapping(brief))
    with pytest.raises(ActionRefused, match="has no business unit 'apac'"):
        lifecycle.start_canary(
            version, business_unit="apac", acting_user=people["author"]
        )


def test_activate_rejected_for_viewer_and_draft(brief, people):
    draft = draft_of(brief, people)
    with pytest.raises(PermissionDenied):
        lifecycle.activate(draft, acting_user=people["viewer"])
    with pytest.raises(ActionRefused, match="is draft"):
        lifecycle.activate(draft, acting_user=people["finance"])


def test_rollback_reactivates_earlier_version(brief, people):
    first = brief.active_version
    second = approved(brief, people, mapping=minor_mapping(brief))
    lifecycle.activate(second, acting_user=people["finance"])
    # The demo's v1 was created active without sign-off; having run, it counts
    # as approved by the system.
    assert refresh(first).was_approved is True
    with pytest.raises(ActionRefused, match="reason is required"):
        lifecycle.rollback(first, acting_user=people["finance"], reason="")
    lifecycle.rollback(
        first, acting_user=people["finance"], reason="Totals were wrong."
    )
    assert refresh(first).state == "active"
    assert refresh(second).state == "retired"
    entry = BriefAudit.objects.filter(version=first, action="rollback").get()
    assert entry.actor == people["finance"]
    assert entry.comment == "Totals were wrong."
    assert entry.detail == {"previous": second.number}


def test_rollback_rejected_for_unapproved(brief, people):
    draft = draft_of(brief, people)
    lifecycle.submit(draft, acting_user=people["author"])
    newer = lifecycle.create_draft(brief, acting_user=people["author"])
    assert newer.number == 3
    with pytest.raises(ActionRefused, match="never approved"):
        lifecycle.rollback(draft, acting_user=people["finance"], reason="try")


def test_rollback_rejected_for_viewer(brief, people):
    with pytest.raises(PermissionDenied):
        lifecycle.rollback(
            brief.active_version, acting_user=people["viewer"], reason="x"
        )


def test_activation_copies_version_triggers(brief, people, demo):
    from syncflows.models import Trigger

    hubspot = Trigger.objects.get(slug="hubspot-deal-won")
    draft = draft_of(brief, people)
    draft, _ = lifecycle.save_version(
        draft,
        {"mapping": minor_mapping(brief)},
        acting_user=people["author"],
        trigger_ids=[hubspot.pk],
    )
    lifecycle.submit(draft, acting_user=people["author"])
    lifecycle.approve(draft, side="crm", acting_user=people["sales"])
    lifecycle.approve(draft, side="erp", acting_user=people["finance"])
    lifecycle.activate(draft, acting_user=people["finance"])
    assert list(brief.triggers.values_list("slug", flat=True)) == ["hubspot-deal-won"]


# Trigger changes follow the same rules.


def test_trigger_change_lifecycle(demo, people):
    from syncflows.models import Trigger

    trigger = Trigger.objects.get(slug="pipedrive-deal-won")
    versions_before = TriggerVersion.objects.filter(trigger=trigger).count()
    condition = 'has(record.status) && record.status == "won" && record.value != "0"'
    change = lifecycle.propose_trigger_change(
        trigger,
        condition=condition,
        reason="Skip zero deals.",
        acting_user=people["author"],
    )
    lifecycle.submit_trigger_change(change, acting_user=people["author"])
    with pytest.raises(ActionRefused, match="cannot review it"):
        lifecycle.approve(change, side="crm", acting_user=people["author"])
    lifecycle.approve(change, side="crm", acting_user=people["sales"])
    with pytest.raises(ActionRefused, match="is in review"):
        lifecycle.activate_trigger_change(change, acting_user=people["finance"])
    lifecycle.approve(change, side="erp", acting_user=people["finance"])
    lifecycle.activate_trigger_change(change, acting_user=people["finance"])
    trigger.refresh_from_db()
    assert trigger.condition == condition
    assert TriggerVersion.objects.filter(trigger=trigger).count() == versions_before + 1
    change.refresh_from_db()
    assert change.state == "active"
    assert change.trigger_version_id == trigger.current_version_id


def test_trigger_edit_in_review_withdraws(demo, people):
    from syncflows.models import Trigger

    trigger = Trigger.objects.get(slug="pipedrive-deal-won")
    change = lifecycle.propose_trigger_change(
        trigger, condition="true", acting_user=people["author"]
    )
    lifecycle.submit_trigger_change(change, acting_user=people["author"])
    lifecycle.approve(change, side="erp", acting_user=people["finance"])
    again = lifecycle.propose_trigger_change(
        trigger, condition="false", acting_user=people["author"]
    )
    assert again.pk == change.pk
    assert again.state == "draft"
    assert Approval.objects.get(trigger_change=change).withdrawn_at is not None


def test_trigger_condition_checked(demo, people):
    from syncflows.models import Trigger

    trigger = Trigger.objects.get(slug="pipedrive-deal-won")
    with pytest.raises(ActionRefused, match="Unknown variable 'deal'"):
        lifecycle.propose_trigger_change(
            trigger, condition="deal.won", acting_user=people["author"]
        )


# Pages: what waits on the viewer, the queues, buttons by role.


def test_list_shows_waiting_on_viewer(client, brief, people):
    draft = draft_of(brief, people)
    lifecycle.submit(draft, acting_user=people["author"])
    client.force_login(people["finance"])
    page = client.get("/briefs/").content.decode()
    assert "v2: Your ERP side approval" in page
    client.force_login(people["author"])
    page = client.get("/briefs/").content.decode()
    assert "v2: Your ERP side approval" not in page
    assert "v2: Your CRM side approval" not in page


def test_queue_lists_open_side(client, brief, people):
    draft = draft_of(brief, people)
    lifecycle.submit(draft, acting_user=people["author"])
    lifecycle.approve(draft, side="erp", acting_user=people["finance"])
    client.force_login(people["viewer"])
    finance_queue = client.get("/briefs/review/finance/").content.decode()
    sales_queue = client.get("/briefs/review/sales-ops/").content.decode()
    assert "Pipedrive won deals to sales orders v2" not in finance_queue
    assert "Pipedrive won deals to sales orders v2" in sales_queue


def test_page_buttons_follow_role(client, brief, people):
    draft = draft_of(brief, people)
    lifecycle.submit(draft, acting_user=people["author"])
    url = f"/briefs/{brief.slug}/?v=2"
    client.force_login(people["finance"])
    page = client.get(url).content.decode()
    assert "Approve the ERP side" in page
    assert "Approve the CRM side" not in page
    client.force_login(people["author"])
    page = client.get(url).content.decode()
    assert "Approve the" not in page
    assert "Request changes" not in page


def test_view_rejects_wrong_side(client, brief, people):
    draft = draft_of(brief, people)
    lifecycle.submit(draft, acting_user=people["author"])
    client.force_login(people["finance"])
    response = client.post(
        f"/briefs/{brief.slug}/v2/approve-crm/", {"comment": "x"}, follow=True
    )
    assert "Only Sales Ops can approve the CRM side." in response.content.decode()
    assert refresh(draft).state == "in_review"
    assert not Approval.objects.filter(version=draft).exists()


def test_version_diff_on_page(client, brief, people):
    lifecycle.save_version(
        brief.active_version,
        {"mapping": minor_mapping(brief)},
        acting_user=people["author"],
    )
    client.force_login(people["viewer"])
    page = client.get(f"/briefs/{brief.slug}/?a=1&b=2").content.decode()
    assert "Changes from v1 to v2" in page
    assert "Mapping of customer_po" in page
    assert "+&quot;PO-&quot; + event.record_id" in page
