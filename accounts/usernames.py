"""What a new user name must be, wherever one is chosen (sign-up, the backend API)."""

from __future__ import annotations

import re

from confusable_homoglyphs import confusables

from accounts.models import User

USERNAME_TAKEN = "this username is taken"
_ALLOWED = re.compile(r"[\w.@+-]{1,150}")


class Refused(ValueError):
    """A name that may not be taken; the message says why."""


def check(value: str, keep: User | None = None) -> str:
    """The name as it will be stored (NFKC: full-width letters fold to plain ones),
    or `Refused`: not letters, digits and @/./+/-/_; letters of several scripts that
    pass for another name (`alice` spelt with a Cyrillic `a`); or taken, whatever its case
    (by anyone but `keep`)."""
    value = User.normalize_username(value)
    if not _ALLOWED.fullmatch(value):
        raise Refused("1 to 150 letters, digits and @/./+/-/_ only")
    if confusables.is_dangerous(value):
        raise Refused("mixes scripts in a way that looks like another name")
    taken = User.objects.filter(username__iexact=value)
    if keep is not None:
        taken = taken.exclude(pk=keep.pk)
    if taken.exists():
        raise Refused(USERNAME_TAKEN)
    return value
