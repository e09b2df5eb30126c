from django import template

from exceptions import sla

register = template.Library()


@register.filter
def time_left(due, now) -> str:
    """Render a due time as the time left, such as "3 h 20 min left"."""
    return sla.format_time_left(due, now) if due and now else ""
