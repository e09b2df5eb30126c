from django.apps import AppConfig


class SyncflowsConfig(AppConfig):
    name = "syncflows"
    verbose_name = "Sync flows"

    def ready(self):
        from syncflows.connectors import load_builtin_kinds

        load_builtin_kinds()

        # Connects the signals that clear the endpoint's connector cache.
        from syncflows.services import connectors  # noqa: F401
