"""The list-page pattern shared by every table in the console.

One URL serves the whole page and, for an HTMX request, only the table
partial, so a filter change or a page link swaps the table and nothing else.
"""

from django.core.paginator import Paginator
from django.shortcuts import render
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
    page = paginate(request, filterset.qs)
    full_context = {"filter": filterset, "page": page, **(context or {})}
    return render_list(
        request, template=template, partial=partial, context=full_context
    )
