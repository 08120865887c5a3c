"""Logging out, changing the password or revoking a token closes the affected sockets
with 4401 and makes the tickets that credential minted worthless; a new password
also revokes the user's API tokens (docs/security.md)."""

from __future__ import annotations

import logging
from typing import Any

from django.contrib.auth.signals import user_logged_out
from django.db import transaction
from django.db.models.signals import post_delete, pre_save
from django.dispatch import receiver

from accounts import credentials
from accounts.models import ApiToken, User, WsTicket
from realtime.node.control import close_connections_where
from realtime.protocol import Close

log = logging.getLogger("tether.accounts")


@receiver(user_logged_out)
def close_sockets_of_session(sender: Any, request: Any, user: Any, **kwargs: Any) -> None:
    """The session's own sockets, and those opened with tickets it obtained."""
    session_key = getattr(getattr(request, "session", None), "session_key", None)
    if user is None or not session_key:
        return
    ref = credentials.session_ref(session_key)
    WsTicket.objects.filter(auth_ref=ref, used_at__isnull=True).delete()
    transaction.on_commit(
        lambda: close_connections_where(Close.UNAUTHENTICATED, user_id=user.pk, auth_ref=ref)
    )


@receiver(pre_save, sender=User)
def close_sockets_on_password_change(sender: Any, instance: User, **kwargs: Any) -> None:
    """A new password invalidates every session, so their sockets go too.

    Disabling the account closes every one of its sockets with 4403.
    """
    update_fields = kwargs.get("update_fields")
    watched = {"password", "is_active"}
    if instance.pk is None or (update_fields is not None and not watched & set(update_fields)):
        return
    old = User.objects.filter(pk=instance.pk).values_list("password", "is_active").first()
    if old is None:
        return
    user_id = instance.pk
    if old[1] and not instance.is_active:
        log.info("user %s disabled: closing its sockets", user_id)
        transaction.on_commit(lambda: close_connections_where(Close.FORBIDDEN, user_id=user_id))
        return
    if old[0] == instance.password:
        return
    log.info("password of user %s changed: closing its sockets, revoking its tokens", user_id)
    WsTicket.objects.filter(
        user_id=user_id, auth_ref__startswith="session:", used_at__isnull=True
    ).delete()
    transaction.on_commit(
        lambda: close_connections_where(
            Close.UNAUTHENTICATED, user_id=user_id, auth_ref__startswith="session:"
        )
    )
    # Each deletion closes that token's sockets and voids its tickets (below).
    transaction.on_commit(lambda: ApiToken.objects.filter(user_id=user_id).delete())


@receiver(post_delete, sender=ApiToken)
def close_sockets_of_revoked_token(sender: Any, instance: ApiToken, **kwargs: Any) -> None:
    """Revoking (deleting) a token ends its sockets and those of its tickets."""
    ref = credentials.token_ref(instance.pk)
    user_id = instance.user_id
    WsTicket.objects.filter(auth_ref=ref, used_at__isnull=True).delete()
    transaction.on_commit(
        lambda: close_connections_where(Close.UNAUTHENTICATED, user_id=user_id, auth_ref=ref)
    )
