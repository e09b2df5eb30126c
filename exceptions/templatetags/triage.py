from django import template

from exceptions import sla

register = template.Library()


@register.filter
def time_left(due, now) -> str:
    """Render a due time as the time left, such as "3 h 20 min left"."""
    return sla.format_time_left(due, now) if due and now else ""


@register.filter
def words(code: str) -> str:
    """Render a code such as ``fix_applied`` as "Fix applied"."""
    return str(code).replace("_", " ").capitalize()
