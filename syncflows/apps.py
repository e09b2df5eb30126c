from django.apps import AppConfig


class SyncflowsConfig(AppConfig):
    name = "syncflows"
    verbose_name = "Sync flows"
