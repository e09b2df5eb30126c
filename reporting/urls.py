from django.urls import path

from reporting.api import views as api
from reporting.views import dashboard, drift, reconciliation

app_name = "reporting"

urlpatterns = [
    path("", dashboard.dashboard, name="dashboard"),
    path("api/kpis/", api.kpis, name="api-kpis"),
    path("reconciliation/", reconciliation.run_list, name="reconciliation"),
    path(
        "reconciliation/start/", reconciliation.run_start, name="reconciliation-start"
    ),
    path(
        "reconciliation/<int:pk>/",
        reconciliation.run_detail,
        name="reconciliation-detail",
    ),
    path("drift/", drift.drift_report, name="drift"),
    path("drift/<int:pk>/review/", drift.finding_review, name="drift-review"),
    path("drift/briefs/<int:pk>/release/", drift.brief_release, name="drift-release"),
]
