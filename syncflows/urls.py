from django.urls import path

from syncflows.views import dashboards, pages, trace

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
    path("briefs/", pages.brief_list, name="briefs"),
    path("dashboards/", dashboards.dashboards, name="dashboards"),
]
