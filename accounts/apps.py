from django.apps import AppConfig


class AccountsConfig(AppConfig):
    name = "accounts"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from corsheaders.signals import check_request_enabled

        from accounts import cors, credentials, signals  # noqa: F401 - connects the receivers
        from realtime.node.runtime import on_maintenance

        check_request_enabled.connect(cors.allowed_origin)

        # Used and expired tickets are worthless; keep the table small.
        on_maintenance(credentials.purge_tickets)
