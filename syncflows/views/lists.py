"""The list-page pattern shared by every table in the console.

One URL serves the whole page and, for an HTMX request, only the table
partial, so a filter change or a page link swaps the table and nothing else.
"""

from django import forms
from django.core.paginator import Paginator
from django.shortcuts import render
from django.utils import timezone
from django.utils.cache import patch_vary_headers

PAGE_SIZE = 50


def wants_partial(request) -> bool:
    """Return True for an HTMX request that should get only the partial.

    A history-restore request comes from the browser's back button after the
    cache missed, so it needs the whole page.
    """
    htmx = getattr(request, "htmx", None)
    return bool(htmx) and not htmx.history_restore_request


def paginate(request, queryset, page_size: int = PAGE_SIZE):
    paginator = Paginator(queryset, page_size)
    return paginator.get_page(request.GET.get("page"))


def query_without_page(request) -> str:
    """Return the current query string minus ``page``, for pagination links."""
    params = request.GET.copy()
    params.pop("page", None)
    return params.urlencode()


def render_list(request, *, template, partial, context, status=200):
    """Render ``template``, or ``partial`` alone for an HTMX request."""
    is_partial = wants_partial(request)
    context = {
        **context,
        "query_without_page": query_without_page(request),
        "is_partial": is_partial,
    }
    chosen = partial if is_partial else template
    response = render(request, chosen, context, status=status)
    # The same URL returns two bodies, so caches must key on the header.
    patch_vary_headers(response, ["HX-Request"])
    return response


def render_filtered_list(
    request, *, filterset_class, queryset, template, partial, context=None
):
    """Filter ``queryset`` with the FilterSet, paginate it and render it."""
    filterset = filterset_class(request.GET or None, queryset=queryset, request=request)
    label_range_inputs(filterset.form)
    page = paginate(request, filterset.qs)
    full_context = {"filter": filterset, "page": page, **(context or {})}
    return render_list(
        request, template=template, partial=partial, context=full_context
    )


def label_range_inputs(form) -> None:
    """Give both inputs of every range filter an accessible name and a format hint.

    A range widget renders two inputs under one label, so the second input
    would have no name for a screen reader without these attributes.
    """
    zone = timezone.get_current_timezone_name()
    for field in form.fields.values():
        widget = field.widget
        if not isinstance(widget, forms.MultiWidget) or len(widget.widgets) != 2:
            continue
        is_time = isinstance(field, forms.MultiValueField) and isinstance(
            field.fields[0], forms.DateTimeField
        )
        for subwidget, end in zip(widget.widgets, ("from", "to"), strict=True):
            subwidget.attrs["aria-label"] = f"{field.label} {end} ({zone})"
            subwidget.attrs["placeholder"] = "YYYY-MM-DD HH:MM" if is_time else end
