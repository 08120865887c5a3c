from django.apps import AppConfig


class RealtimeConfig(AppConfig):
    name = "realtime"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from monitoring.views import set_operator_rule
        from realtime import checks  # noqa: F401 - registers system checks
        from realtime.chat import uploads
        from realtime.chat.node import chat_node
        from realtime.hooks.node import hooks_node
        from realtime.node.runtime import add_part, on_maintenance
        from realtime.rest.permissions import VIEW_OPERATIONS, holds
        from realtime.topics.node import topics_node

        # The domains' work on every node, in this order (docs/architecture.md).
        add_part(chat_node)
        add_part(topics_node)
        # Why a /ready/ check failed is shown to operators (monitoring cannot import this).
        set_operator_rule(lambda user: holds(user, VIEW_OPERATIONS))
        add_part(hooks_node)
        # Attachments no message took within ATTACHMENT_UNCLAIMED_TTL: rows and files.
        on_maintenance(uploads.maintain)
