from django.urls import path
from django.views.generic import RedirectView

from syncflows.views import briefs, health, pages, trace

app_name = "syncflows"

urlpatterns = [
    path("", pages.home, name="home"),
    path("deliveries/", pages.delivery_list, name="deliveries"),
    path("deliveries/<int:pk>/", pages.delivery_detail, name="delivery-detail"),
    path("deliveries/<int:pk>/replay/", pages.delivery_replay, name="delivery-replay"),
    path("events/", pages.event_list, name="events"),
    path("commands/", pages.command_list, name="commands"),
    path("commands/<int:pk>/", pages.command_detail, name="command-detail"),
    path("trace/", trace.trace, name="trace"),
    path("connectors/health/", health.connector_health, name="connector-health"),
    path("briefs/", briefs.brief_list, name="briefs"),
    path("briefs/review/<slug:queue>/", briefs.approval_queue, name="approval-queue"),
    path("briefs/triggers/<slug:slug>/", briefs.trigger_change, name="trigger-change"),
    path("briefs/<slug:slug>/", briefs.brief_detail, name="brief-detail"),
    path(
        "briefs/<slug:slug>/v<int:number>/edit/", briefs.version_edit, name="version-edit"
    ),
    path(
        "briefs/<slug:slug>/v<int:number>/<slug:action>/",
        briefs.version_action,
        name="version-action",
    ),
    path(
        "dashboards/",
        RedirectView.as_view(pattern_name="reporting:dashboard", query_string=True),
        name="dashboards",
    ),
]
