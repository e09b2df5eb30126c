from django.apps import AppConfig


class ExceptionsConfig(AppConfig):
    name = "exceptions"
    verbose_name = "Exception lanes"

    def ready(self):
        # A bad business-hours setting stops start-up instead of the first case.
        from exceptions.sla import calendar_from_settings

        calendar_from_settings()

        # The pipeline reports permanent failures through this hook, so that
        # syncflows never imports this app.
        from exceptions.services.cases import (
            close_cases_of_commands,
            close_obsolete_cases,
            open_case_for_failure,
        )
        from syncflows.services.failures import (
            register_failure_handler,
            register_resolution_handler,
            register_success_handler,
        )

        register_failure_handler(open_case_for_failure)
        register_resolution_handler(close_obsolete_cases)
        register_success_handler(close_cases_of_commands)
