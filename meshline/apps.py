from django.apps import AppConfig


class MeshlineConfig(AppConfig):
    name = "meshline"
    verbose_name = "Meshline"
