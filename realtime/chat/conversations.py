"""Conversations and membership: access, create, add, remove, list (sync ORM services).

`access_*` fetch or raise `forbidden`; `check_*` validate and authorize, then
call `do_*`, which change state and publish after commit (docs/architecture.md, rule 8).
"""

from __future__ import annotations

import secrets
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import IntegrityError, connection, transaction
from django.db.models import Count, F

from realtime.chat import events
from realtime.chat.representations import conversation_repr
from realtime.models import Conversation, Membership, Message
from realtime.protocol import Code, TetherError, bad_request, encode, storable_int, valid_id

User = get_user_model()

MAX_GROUP_MEMBERS = 1000
MAX_TITLE_CHARS = 200


def valid_conversation_id(conversation_id: Any) -> bool:
    # No id holds NUL, and PostgreSQL refuses NUL in any query (a 500, not "no such").
    return valid_id(conversation_id) and "\x00" not in conversation_id


def new_conversation_id() -> str:
    return "k" + secrets.token_hex(8)


def forbidden() -> TetherError:
    # The same answer whether or not the conversation exists (PROTOCOL 3).
    return TetherError(Code.FORBIDDEN, "you are not a member of that conversation")


def no_conversation() -> TetherError:
    return TetherError(Code.NOT_FOUND, "no such conversation")


def access_conversation(user_id: int, conversation_id: Any) -> tuple[Conversation, Membership]:
    """The conversation and the caller's membership, or `forbidden`."""
    if not valid_conversation_id(conversation_id):
        raise bad_request("conversation", "must be a conversation id (a string)")
    membership = (
        Membership.objects.select_related("conversation", "conversation__created_by")
        .filter(conversation_id=conversation_id, user_id=user_id)
        .first()
    )
    if membership is None:
        raise forbidden()
    return membership.conversation, membership


def conversation_for(actor: Any | None, conversation_id: Any) -> Conversation:
    """The conversation `actor` may act on: a member's, or any for the application's
    backend (`actor` None, PROTOCOL 12), which gets `not_found` for an unknown id."""
    if actor is not None:
        return access_conversation(actor.id, conversation_id)[0]
    if not valid_conversation_id(conversation_id):
        raise bad_request("conversation", "must be a conversation id (a string)")
    conversation = Conversation.objects.filter(pk=conversation_id).first()
    if conversation is None:
        raise no_conversation()
    return conversation


def is_member(user_id: int, conversation_id: Any) -> bool:
    """Whether the user belongs to the conversation (one indexed lookup)."""
    if not valid_conversation_id(conversation_id):
        raise bad_request("conversation", "must be a conversation id (a string)")
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT 1 FROM {connection.ops.quote_name(Membership._meta.db_table)} "
            "WHERE conversation_id = %s AND user_id = %s",
            [conversation_id, user_id],
        )
        return cursor.fetchone() is not None


def members_of(conversation_id: str) -> list[Any]:
    return list(User.objects.filter(memberships__conversation_id=conversation_id).order_by("id"))


def unread_counts(user_id: int, conversation_ids: list[str]) -> dict[str, int]:
    """Per conversation, the caller's unread count (PROTOCOL 10): `kind: "message"`
    events of others (system messages included), not deleted, past the caller's read
    position. One query; conversations with none are absent."""
    if not conversation_ids:
        return {}
    rows = (
        Message.objects.filter(
            conversation_id__in=conversation_ids,
            conversation__memberships__user_id=user_id,
            seq__gt=F("conversation__memberships__read_seq"),
            kind=Message.MESSAGE,
            deleted=False,
        )
        .exclude(sender_id=user_id)
        .values("conversation_id")
        .annotate(n=Count("id"))
        .values_list("conversation_id", "n")
    )
    return dict(rows)


def represent(conversation: Conversation, user_id: int) -> dict[str, Any]:
    positions = dict(
        Membership.objects.filter(conversation=conversation).values_list("user_id", "read_seq")
    )
    read_seq = positions.get(user_id)
    unread = unread_counts(user_id, [conversation.id]).get(conversation.id, 0)
    return conversation_repr(
        conversation,
        members_of(conversation.id),
        read_seq,
        unread,
        {str(uid): seq for uid, seq in sorted(positions.items())},
    )


def _users(ids: Any, field: str) -> list[Any]:
    if not isinstance(ids, list) or not all(
        isinstance(i, int) and not isinstance(i, bool) for i in ids
    ):
        raise bad_request(field, "must be a list of user ids (integers)")
    unique = sorted(set(ids))
    users = list(User.objects.filter(id__in=[i for i in unique if storable_int(i)], is_active=True))
    if len(users) != len(unique):
        missing = sorted(set(unique) - {u.id for u in users})
        raise TetherError(Code.NOT_FOUND, f"{field}: no such user(s): {missing}", field=field)
    return users


def check_create_group(creator: Any | None, title: Any, member_ids: Any) -> Conversation:
    """A group of `creator` (a member, its `created_by`) and `member_ids`; `creator`
    None: the application's backend's, which is not a member (PROTOCOL 12)."""
    if not isinstance(title, str) or not 1 <= len(title.strip()) <= MAX_TITLE_CHARS:
        raise bad_request("title", f"must be 1 to {MAX_TITLE_CHARS} characters")
    if "\x00" in title:  # PostgreSQL cannot store it
        raise bad_request("title", "must not contain NUL characters")
    users = _users(member_ids if member_ids is not None else [], "members")
    if len(users) + (creator is not None) > MAX_GROUP_MEMBERS:
        raise bad_request("members", f"at most {MAX_GROUP_MEMBERS} members")
    return do_create(creator, Conversation.GROUP, title.strip(), users, None)


def check_create_direct(creator: Any, member_ids: Any) -> tuple[Conversation, bool]:
    users = _users(member_ids, "members")
    others = [u for u in users if u.id != creator.id]
    if len(others) != 1 or len(users) != 1:
        raise bad_request("members", "a direct conversation names exactly one other user")
    return _direct(creator, [creator, others[0]])


def check_create_direct_between(member_ids: Any) -> tuple[Conversation, bool]:
    """The backend's direct conversation: exactly two users, neither of them the caller."""
    users = _users(member_ids, "members")
    if len(users) != 2:
        raise bad_request("members", "a direct conversation names exactly two users")
    return _direct(None, users)


def _direct(creator: Any | None, pair: list[Any]) -> tuple[Conversation, bool]:
    """The one direct conversation of a pair of users, found or created."""
    low, high = sorted(u.id for u in pair)
    key = f"{low}:{high}"
    existing = Conversation.objects.filter(direct_key=key).first()
    if existing is not None:
        return existing, False
    try:
        return do_create(creator, Conversation.DIRECT, "", pair, key), True
    except IntegrityError:  # created at the same moment elsewhere
        return Conversation.objects.get(direct_key=key), False


def do_create(
    creator: Any | None, kind: str, title: str, others: list[Any], direct_key: str | None
) -> Conversation:
    with transaction.atomic():
        conversation = Conversation.objects.create(
            id=new_conversation_id(),
            kind=kind,
            title=title,
            created_by=creator,
            direct_key=direct_key,
        )
        users = {u.id: u for u in [*([creator] if creator is not None else []), *others]}
        Membership.objects.bulk_create(
            [Membership(conversation=conversation, user_id=uid) for uid in users]
        )
        events.members_joined(conversation.id, list(users))
    return conversation


def check_add_member(actor: Any | None, conversation_id: str, user_id: Any) -> tuple[Any, bool]:
    """Add a user to a group `actor` is a member of (any group when `actor` is None:
    the application's backend, PROTOCOL 12)."""
    conversation = conversation_for(actor, conversation_id)
    if conversation.kind == Conversation.DIRECT:
        raise bad_request("user", "a direct conversation always has exactly two members")
    if isinstance(user_id, bool) or not isinstance(user_id, int):
        raise bad_request("user", "must be a user id (an integer)")
    user = (
        User.objects.filter(id=user_id, is_active=True).first() if storable_int(user_id) else None
    )
    if user is None:
        raise TetherError(Code.NOT_FOUND, f"user: no such user: {user_id}", field="user")
    if Membership.objects.filter(conversation=conversation, user=user).exists():
        return user, False
    if Membership.objects.filter(conversation=conversation).count() >= MAX_GROUP_MEMBERS:
        raise TetherError(Code.LIMIT_EXCEEDED, f"at most {MAX_GROUP_MEMBERS} members")
    do_add_member(conversation, user)
    return user, True


def do_add_member(conversation: Conversation, user: Any) -> None:
    with transaction.atomic():
        _, created = Membership.objects.get_or_create(conversation=conversation, user=user)
        if created:
            events.members_joined(conversation.id, [user.id])


def check_remove_member(actor: Any | None, conversation_id: str, user_id: int) -> None:
    """A member leaves, or the group's creator removes one (`actor` None: the
    application's backend removes any member, PROTOCOL 12)."""
    conversation = conversation_for(actor, conversation_id)
    if actor is not None and actor.id != user_id and actor.id != conversation.created_by_id:
        raise TetherError(
            Code.FORBIDDEN, "only the member themself or the conversation's creator may do that"
        )
    if conversation.kind == Conversation.DIRECT:
        raise bad_request("user", "members cannot leave a direct conversation")
    if (
        not storable_int(user_id)
        or not Membership.objects.filter(conversation=conversation, user_id=user_id).exists()
    ):
        raise TetherError(Code.NOT_FOUND, f"user {user_id} is not a member")
    do_remove_member(conversation, user_id)


def do_remove_member(conversation: Conversation, user_id: int) -> None:
    with transaction.atomic():
        deleted, _ = Membership.objects.filter(conversation=conversation, user_id=user_id).delete()
        if deleted:
            events.member_left(conversation.id, user_id)


def list_conversations(user_id: int, limit: int, offset: int) -> tuple[list[dict], bool]:
    """The caller's conversations, most recently active first: at most `limit`, and
    no more than fit in `MAX_REPLY_BYTES` (a group's member list is long: a page of
    big groups is cut short, `has_more` true, the next page at `offset + len`)."""
    memberships = list(
        Membership.objects.filter(user_id=user_id)
        .select_related("conversation", "conversation__created_by")
        .order_by("-conversation__last_seq", "conversation_id")[offset : offset + limit + 1]
    )
    has_more = len(memberships) > limit
    page = _reprs(memberships[:limit])
    used = 0
    for kept, item in enumerate(page):
        used += len(encode(item).encode())
        if used > settings.MAX_REPLY_BYTES and kept:
            return page[:kept], True
    return page, has_more


def conversation_reprs(user_id: int, ids: list[str]) -> list[dict]:
    """The caller's view of these conversations (those it is a member of)."""
    memberships = list(
        Membership.objects.filter(user_id=user_id, conversation_id__in=ids).select_related(
            "conversation", "conversation__created_by"
        )
    )
    return _reprs(memberships)


def _reprs(memberships: list[Membership]) -> list[dict]:
    ids = [m.conversation_id for m in memberships]
    members: dict[str, list[Any]] = {cid: [] for cid in ids}
    positions: dict[str, dict[str, int]] = {cid: {} for cid in ids}
    for m in (
        Membership.objects.filter(conversation_id__in=ids)
        .select_related("user")
        .order_by("user_id")
    ):
        members[m.conversation_id].append(m.user)
        positions[m.conversation_id][str(m.user_id)] = m.read_seq
    unread = unread_counts(memberships[0].user_id, ids) if memberships else {}
    return [
        conversation_repr(
            m.conversation,
            members[m.conversation_id],
            m.read_seq,
            unread.get(m.conversation_id, 0),
            positions[m.conversation_id],
        )
        for m in memberships
    ]


def conversation_heads(user_id: int) -> dict[str, int]:
    """The caller's conversations and their latest seq."""
    return dict(
        Membership.objects.filter(user_id=user_id).values_list(
            "conversation_id", "conversation__last_seq"
        )
    )


def conversation_heads_page(user_id: int, after: str, limit: int) -> tuple[dict[str, int], bool]:
    """The caller's conversations with ids above `after` ("" from the first), at most
    `limit` in id order, with their latest seq; and whether more follow."""
    rows = list(
        Membership.objects.filter(user_id=user_id, conversation_id__gt=after)
        .order_by("conversation_id")
        .values_list("conversation_id", "conversation__last_seq")[: limit + 1]
    )
    return dict(rows[:limit]), len(rows) > limit
