from django.apps import AppConfig


class SyncflowsConfig(AppConfig):
    name = "syncflows"
    verbose_name = "Sync flows"

    def ready(self):
        from syncflows.connectors import load_builtin_kinds

        load_builtin_kinds()
