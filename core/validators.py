"""Model-layer validation of token keys, shared by the API, the admin and management commands.

Raises Django's ``ValidationError``; the API's ``KeyField`` turns it into DRF's error body, so every
entry point accepts and refuses exactly the same keys with the same messages. Messages never repeat the
submitted value.
"""

import re
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError

# The messages and codes DRF gives a CharField, so the API's error bodies stay what they were.
MESSAGES = {
    "invalid": "Not a valid string.",
    "blank": "This field may not be blank.",
    "charset": "Only visible ASCII characters (0x21-0x7E) are allowed.",
    "min_length": "Ensure this field has at least {min_length} characters.",
    "max_length": "Ensure this field has no more than {max_length} characters.",
}


# Visible ASCII only (0x21-0x7E): what an Authorization header can carry.
_VISIBLE_ASCII = re.compile(r"[\x21-\x7e]*")


def _fail(code: str, **params: Any) -> ValidationError:
    return ValidationError(MESSAGES[code].format(**params), code=code)


def validate_key(value: Any) -> str:
    """``value`` if it is a key a Bearer header can carry and the deployment's length policy allows.

    A string of visible ASCII (no coercion, no trimming) of ``TOKEN_KEY_MIN_LENGTH`` to
    ``TOKEN_KEY_MAX_LENGTH`` characters. The settings are read at call time, so the policy follows them.
    """
    if not isinstance(value, str):
        raise _fail("invalid")
    if value == "":
        raise _fail("blank")
    if not _VISIBLE_ASCII.fullmatch(value):
        raise _fail("charset")
    if len(value) < settings.TOKEN_KEY_MIN_LENGTH:
        raise _fail("min_length", min_length=settings.TOKEN_KEY_MIN_LENGTH)
    if len(value) > settings.TOKEN_KEY_MAX_LENGTH:
        raise _fail("max_length", max_length=settings.TOKEN_KEY_MAX_LENGTH)
    return value
