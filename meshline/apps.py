from django.apps import AppConfig


class MeshlineConfig(AppConfig):
    name = "meshline"
    verbose_name = "Meshline"

    def ready(self):
        from meshline.shutdown import connect_worker_signals

        connect_worker_signals()
