from django.apps import AppConfig


class AccountsConfig(AppConfig):
    name = "accounts"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from accounts import credentials, signals  # noqa: F401 - connects the receivers
        from realtime.node.runtime import on_maintenance

        # Used and expired tickets are worthless; keep the table small.
        on_maintenance(credentials.purge_tickets)
