from django.apps import AppConfig


class ReportingConfig(AppConfig):
    name = "reporting"
    verbose_name = "Reporting"

    def ready(self):
        # The dispatcher asks this guard before sending each command, so that
        # syncflows never imports this app.
        from reporting.services.drift import drift_guard, drift_guard_many
        from syncflows.services.failures import register_dispatch_guard

        register_dispatch_guard(drift_guard, many=drift_guard_many)
