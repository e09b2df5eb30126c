from django.contrib import admin
from django.urls import include, path

from meshline.health import health
from syncflows.views.inbound import inbound

urlpatterns = [
    path("api/v1/inbound/<slug:slug>/", inbound, name="inbound"),
    path("api/v1/", include("meshline.api_urls")),
    path("health/", health, name="health"),
    path("admin/", admin.site.urls),
    path("accounts/", include("django.contrib.auth.urls")),
    path("exceptions/", include("exceptions.urls")),
    path("reporting/", include("reporting.urls")),
    path("", include("syncflows.urls")),
]

handler404 = "meshline.api.not_found"
