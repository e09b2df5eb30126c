"""Writes to pipeline configuration that must keep a version history."""

from syncflows.models import TriggerVersion


def save_trigger(trigger, *, acting_user=None):
    """Save a trigger; a changed condition or object type adds a TriggerVersion."""
    current = trigger.current_version
    changed = current is None or (current.condition, current.object_type) != (
        trigger.condition,
        trigger.object_type,
    )
    trigger.save()
    if changed:
        number = (trigger.versions.order_by("-number").values_list("number", flat=True).first() or 0) + 1
        version = TriggerVersion.objects.create(
            trigger=trigger,
            number=number,
            object_type=trigger.object_type,
            condition=trigger.condition,
            created_by=acting_user if acting_user and acting_user.is_authenticated else None,
        )
        trigger.current_version = version
        trigger.save(update_fields=["current_version"])
    return trigger
