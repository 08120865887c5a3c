"""Logging out, changing the password or revoking a token closes the affected sockets
with 4401 and makes the tickets that credential minted worthless; a new password
also revokes the user's API tokens; a change of an operator's rights (staff status,
permissions, groups) makes their open sockets drop what it no longer allows
(docs/security.md)."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from django.contrib.auth.models import Group, Permission
from django.contrib.auth.signals import user_logged_out
from django.db import transaction
from django.db.models.signals import m2m_changed, post_delete, post_save, pre_delete, pre_save
from django.dispatch import receiver

from accounts import credentials
from accounts.models import ApiToken, User, WsTicket
from realtime.node.control import close_connections_where, rights_changed
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


# --- operators' rights -------------------------------------------------------
# Rights are Django permissions held by staff accounts (realtime/rest/permissions.py).
# Only a loss can end anything on an open socket, so only losses are passed on, after
# the commit, to every node (each holding node re-reads the rights from the database).

USER_PERMISSIONS = User.user_permissions.through
USER_GROUPS = User.groups.through
GROUP_PERMISSIONS = Group.permissions.through


def _recheck_after_commit(user_ids: Iterable[int]) -> None:
    ids = set(user_ids)
    if ids:
        transaction.on_commit(lambda: rights_changed(ids))


# Set on the instance between pre_save and post_save: (is_staff, is_superuser) as stored.
STATUS_BEFORE = "_tether_status_before"


@receiver(pre_save, sender=User)
def remember_status(sender: Any, instance: User, **kwargs: Any) -> None:
    """Staff and superuser status as stored, read before the save overwrites them."""
    update_fields = kwargs.get("update_fields")
    watched = {"is_staff", "is_superuser"}
    if instance.pk is None or (update_fields is not None and not watched & set(update_fields)):
        return
    old = User.objects.filter(pk=instance.pk).values_list("is_staff", "is_superuser").first()
    if old is not None:
        setattr(instance, STATUS_BEFORE, tuple(old))


@receiver(post_save, sender=User)
def recheck_rights_on_status_change(sender: Any, instance: User, **kwargs: Any) -> None:
    """Staff or superuser status changed (disabling the account closes its sockets).

    Passed on from post_save: a plain save runs outside any transaction, where
    `on_commit` runs at once, and the nodes must read the row as written."""
    before = instance.__dict__.pop(STATUS_BEFORE, None)
    if before is not None and before != (instance.is_staff, instance.is_superuser):
        _recheck_after_commit([instance.pk])


def _users_in_groups(group_ids: Iterable[int]) -> set[int]:
    return set(User.objects.filter(groups__in=list(group_ids)).values_list("pk", flat=True))


@receiver(m2m_changed, sender=USER_PERMISSIONS)
@receiver(m2m_changed, sender=USER_GROUPS)
@receiver(m2m_changed, sender=GROUP_PERMISSIONS)
def recheck_rights_on_lost_permission(
    sender: Any, instance: Any, action: str, reverse: bool, pk_set: set[int] | None, **kwargs: Any
) -> None:
    """A permission taken from a user or a group, a user taken out of a group, from
    either side of the relation (`user.groups.remove(g)` or `g.user_set.remove(u)`).

    A clear is caught before it happens (`pre_clear`): afterwards nothing says who
    lost what."""
    if action not in ("post_remove", "pre_clear"):
        return
    if sender is GROUP_PERMISSIONS:
        if not reverse:
            groups: Iterable[int] = [instance.pk]  # a group lost permissions
        elif pk_set is not None:
            groups = pk_set  # a permission taken from these groups
        else:
            groups = instance.group_set.values_list("pk", flat=True)
        _recheck_after_commit(_users_in_groups(groups))
    elif not reverse:
        _recheck_after_commit([instance.pk])  # a user lost permissions or groups
    elif pk_set is not None:
        _recheck_after_commit(pk_set)  # a permission or a group taken from these users
    else:
        _recheck_after_commit(set(instance.user_set.values_list("pk", flat=True)))


@receiver(pre_delete, sender=Group)
def recheck_rights_of_deleted_group(sender: Any, instance: Group, **kwargs: Any) -> None:
    """Its members lose what it gave (the deletion sends no m2m_changed)."""
    _recheck_after_commit(_users_in_groups([instance.pk]))


@receiver(pre_delete, sender=Permission)
def recheck_rights_of_deleted_permission(sender: Any, instance: Permission, **kwargs: Any) -> None:
    """Whoever held it, directly or through a group, loses it."""
    direct = set(instance.user_set.values_list("pk", flat=True))
    _recheck_after_commit(
        direct | _users_in_groups(instance.group_set.values_list("pk", flat=True))
    )
