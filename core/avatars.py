"""Stable group uuids and locally made avatars, for the user view authentik's clients expect."""

import base64
import functools
import uuid
from html import escape

from django.contrib.auth.models import Group

from core.models import User

# Groups here are Django's (integer keys); authentik's have uuids. A uuid5 of the integer key gives
# every group a stable uuid for the ``groups``/``groups_obj`` fields authentik's clients expect.
GROUP_UUID_NAMESPACE = uuid.UUID("5f0c1a52-3d4e-4c1b-9a57-6f4c2b8e1d90")
_AVATAR_COLOURS = ("#3949ab", "#00897b", "#6d4c41", "#8e24aa", "#c62828", "#2e7d32", "#ef6c00", "#546e7a")


def group_uuid(group: Group) -> uuid.UUID:
    return group_uuid_of_pk(group.pk)


@functools.lru_cache(maxsize=4096)
def group_uuid_of_pk(pk: int) -> uuid.UUID:
    """``group_uuid`` from the group's key alone (the token list reads groups as rows, not instances).

    Remembered: a page of tokens can show dozens of groups, each a SHA-1 to compute.
    """
    return uuid.uuid5(GROUP_UUID_NAMESPACE, str(pk))


def avatar_data_uri(user: User) -> str:
    """An SVG of the user's initials on a colour derived from the user's uuid, as a ``data:`` URI.

    Made locally: no request to a gravatar-like service, which would tell a third party who looks at
    which user. Only letters and digits become initials, and they are XML-escaped anyway.
    """
    return avatar_data_uri_of(user.name, user.username, user.uuid)


def avatar_data_uri_of(name: str, username: str, user_uuid: uuid.UUID) -> str:
    """``avatar_data_uri`` from the three user fields it depends on (the token list reads users as rows)."""
    words = (name or username).split()
    initials = "".join(word[0] for word in words[:2] if word[0].isalnum()).upper() or "?"
    return _avatar_of(initials, _AVATAR_COLOURS[user_uuid.int % len(_AVATAR_COLOURS)])


@functools.lru_cache(maxsize=4096)
def _avatar_of(initials: str, colour: str) -> str:
    """The data URI of an avatar; remembered, as many users share initials and colour (a page of tokens
    shows up to 100 owners, and encoding each SVG cost more than the rest of its owner's representation)."""
    svg = (
        '<svg xmlns="http://www.w3.org/2000/svg" width="64" height="64" viewBox="0 0 64 64">'
        f'<rect width="64" height="64" fill="{colour}"/>'
        '<text x="32" y="32" dy=".35em" text-anchor="middle" font-family="sans-serif" font-size="26" '
        f'fill="#ffffff">{escape(initials)}</text></svg>'
    )
    return "data:image/svg+xml;base64," + base64.b64encode(svg.encode()).decode("ascii")
