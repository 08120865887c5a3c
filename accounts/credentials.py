"""API tokens and WebSocket tickets: issue, verify, consume. Stored hashed only."""

from __future__ import annotations

import functools
import hashlib
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.db import DEFAULT_DB_ALIAS, connection, connections
from django.utils import timezone

from accounts.models import SCOPES, ApiToken, User, WsTicket
from realtime.node.db import any_of, bound_cursor

TOKEN_PREFIX = "tt_"
TICKET_PREFIX = "tk_"
TICKET_SECONDS = 60


def digest(raw: str) -> str:
    """SHA-256 of a credential: the tokens are random, so no salt or slow hash is needed."""
    return hashlib.sha256(raw.encode("utf-8", "surrogatepass")).hexdigest()


def session_ref(session_key: str) -> str:
    """The registry's reference for a session, without the session key itself."""
    return "session:" + digest(session_key)[:32]


def token_ref(token_id: int) -> str:
    return f"token:{token_id}"


def ms(moment: datetime | None) -> int | None:
    """A credential's end as the protocol gives it (ms since the epoch), or None."""
    return None if moment is None else int(moment.timestamp() * 1000)


def session_ends(session_key: str) -> datetime | None:
    """When a stored session expires (database sessions), or None when unknown."""
    from django.contrib.sessions.models import Session

    return (
        Session.objects.filter(session_key=session_key)
        .values_list("expire_date", flat=True)
        .first()
    )


def issue_token(
    user: User, name: str = "", scopes: Iterable[str] = (), expires_in: timedelta | None = None
) -> tuple[ApiToken, str]:
    """Create a token with these scopes (PROTOCOL 12), valid for `expires_in` (None:
    for ever); the raw value is returned once and never stored."""
    wanted = sorted(set(scopes))
    unknown = set(wanted) - set(SCOPES)
    if unknown:
        raise ValueError(f"unknown scopes {', '.join(sorted(unknown))}; known: {', '.join(SCOPES)}")
    raw = TOKEN_PREFIX + secrets.token_urlsafe(32)
    token = ApiToken.objects.create(
        user=user,
        name=name,
        prefix=raw[:10],
        key_hash=digest(raw),
        scopes=",".join(wanted),
        expires_at=None if expires_in is None else timezone.now() + expires_in,
    )
    return token, raw


def verify_token(raw: str) -> ApiToken | None:
    """The token for `raw`, with its user, or None."""
    return verify_tokens([raw])[0]


def verify_tokens(raws: list[str]) -> list[ApiToken | None]:
    """For each raw token, its token with its user, or None: one query for all of them
    (socket handshakes arrive together and are checked as a batch)."""
    hashes = {raw: digest(raw) for raw in raws if raw.startswith(TOKEN_PREFIX) and len(raw) <= 200}
    query = _token_query(connection.vendor)
    rows = _rows_by_hash(query, sorted(set(hashes.values()))) if hashes else {}
    now = timezone.now()
    tokens: list[ApiToken | None] = []
    stale: set[int] = set()
    for raw in raws:
        row = rows.get(hashes.get(raw, ""))
        token = None if row is None else _token_from_row(query, row)
        if token is not None and token.expires_at is not None and token.expires_at <= now:
            token = None  # expired: no credential (the record stays for its owner to see)
        if token is not None:
            # Coarse last-used stamp: one write a minute per token at most.
            if token.last_used_at is None or now - token.last_used_at > timedelta(minutes=1):
                stale.add(token.pk)
                token.last_used_at = now
        tokens.append(token)
    if stale:
        _stamp_last_used(sorted(stale), now)
    return tokens


def _stamp_last_used(token_ids: list[int], now: Any) -> None:
    """Raw SQL: building the ORM's UPDATE cost more than running it (handshakes)."""
    qn = connection.ops.quote_name
    where, params = any_of(qn("id"), token_ids)
    with bound_cursor() as cursor:
        cursor.execute(
            f"UPDATE {qn(ApiToken._meta.db_table)} SET {qn('last_used_at')} = %s WHERE {where}",
            [connection.ops.adapt_datetimefield_value(now), *params],
        )


@dataclass(frozen=True)
class _TokenQuery:
    """How to read tokens with their users in one raw query, built once per backend."""

    sql: str  # without its WHERE clause
    token_names: list[str]  # attribute names of the token's columns, in order
    user_names: list[str]  # then the user's
    at_hash: int  # the key hash's column
    # (column, its converters) for the columns the backend returns in another form
    # (SQLite: datetimes as text); converters are looked up once, not per row.
    conversions: tuple[tuple[int, tuple[tuple[Any, bool, Any], ...]], ...]


@functools.cache
def _token_query(vendor: str) -> _TokenQuery:
    token_fields = list(ApiToken._meta.concrete_fields)
    user_fields = list(User._meta.concrete_fields)
    qn = connection.ops.quote_name
    columns = [f"t.{qn(f.column)}" for f in token_fields] + [
        f"u.{qn(f.column)}" for f in user_fields
    ]
    conversions = tuple(
        (i, found)
        for i, field in enumerate(token_fields + user_fields)
        if (found := _converters(field))
    )
    return _TokenQuery(
        sql=(
            f"SELECT {', '.join(columns)} FROM {qn(ApiToken._meta.db_table)} t "
            f"JOIN {qn(User._meta.db_table)} u ON u.{qn(User._meta.pk.column)} = t.{qn('user_id')} "
        ),
        token_names=[f.attname for f in token_fields],
        user_names=[f.attname for f in user_fields],
        at_hash=[f.attname for f in token_fields].index("key_hash"),
        conversions=conversions,
    )


def _converters(field: Any) -> tuple[tuple[Any, bool, Any], ...]:
    """(function, whether it is a backend method, column) of a field's converters on
    this backend. Backend methods are kept unbound: a request may run on a new
    connection object, and keeping one bound to an old one would keep it alive."""
    col = field.get_col(field.model._meta.db_table)
    backend = tuple(
        (converter.__func__, True, col) for converter in connection.ops.get_db_converters(col)
    )
    return backend + tuple(
        (converter, False, col) for converter in col.get_db_converters(connection)
    )


def _rows_by_hash(query: _TokenQuery, key_hashes: list[str]) -> dict[str, tuple[Any, ...]]:
    """Token and user rows by key hash, in one raw query: this runs for every socket
    handshake, and building the ORM query cost more than the database did."""
    where, params = any_of("t.key_hash", key_hashes)
    with bound_cursor() as cursor:
        cursor.execute(f"{query.sql}WHERE {where}", params)
        return {row[query.at_hash]: row for row in cursor.fetchall()}


def _token_from_row(query: _TokenQuery, row: tuple[Any, ...]) -> ApiToken:
    values = list(row)
    if query.conversions:
        real = connections[DEFAULT_DB_ALIAS]  # not the proxy: this loop runs per column
        ops = real.ops
        for i, converters in query.conversions:
            value = values[i]
            for function, of_backend, col in converters:
                if of_backend:
                    value = function(ops, value, col, real)
                else:
                    value = function(value, col, real)
            values[i] = value
    split = len(query.token_names)
    token = ApiToken.from_db(DEFAULT_DB_ALIAS, query.token_names, values[:split])
    token.user = User.from_db(DEFAULT_DB_ALIAS, query.user_names, values[split:])
    return token


def issue_ticket(user: User, auth_ref: str, ends: datetime | None = None) -> str:
    """A single-use ticket valid for TICKET_SECONDS, or until its credential `ends`
    if that comes first."""
    raw = TICKET_PREFIX + secrets.token_urlsafe(32)
    expires_at = timezone.now() + timedelta(seconds=TICKET_SECONDS)
    WsTicket.objects.create(
        key_hash=digest(raw),
        user=user,
        auth_ref=auth_ref,
        expires_at=expires_at if ends is None else min(expires_at, ends),
        credential_expires_at=ends,
    )
    return raw


def consume_ticket(raw: str) -> WsTicket | None:
    """Use a ticket once. One conditional UPDATE, so two nodes cannot both use it."""
    if not raw.startswith(TICKET_PREFIX) or len(raw) > 200:
        return None
    key_hash = digest(raw)
    now = timezone.now()
    used = WsTicket.objects.filter(
        key_hash=key_hash, used_at__isnull=True, expires_at__gt=now
    ).update(used_at=now)
    if used != 1:
        return None
    return WsTicket.objects.select_related("user").get(key_hash=key_hash)


def purge_tickets(older_than: timedelta = timedelta(hours=1)) -> int:
    """Delete tickets expired for a while (they are useless, keep the table small)."""
    deleted, _ = WsTicket.objects.filter(expires_at__lt=timezone.now() - older_than).delete()
    return deleted


__all__ = [
    "consume_ticket",
    "digest",
    "issue_ticket",
    "issue_token",
    "purge_tickets",
    "session_ref",
    "token_ref",
    "verify_token",
    "verify_tokens",
]
