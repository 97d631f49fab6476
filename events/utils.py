"""Cleansing of request values before an audit event records them: secret-looking names masked, long
values clipped. The request summary itself (``RequestMeta``) is ``tokens_service.request_meta``'s."""

import re
from collections.abc import Mapping
from typing import Any

MASK = "********************"
# Query arguments whose names look like they carry a secret are recorded masked.
_SECRET_NAME = re.compile(r"key|token|secret|pass|auth|sig|cred|session|cookie", re.IGNORECASE)
_MAX_FIELD = 512


def clip(value: str) -> str:
    # PostgreSQL's jsonb cannot hold U+0000: a NUL in a query argument would otherwise fail the write.
    value = value.replace("\x00", "\ufffd")
    return value if len(value) <= _MAX_FIELD else value[:_MAX_FIELD] + "…"


def cleanse_args(args: Mapping[str, Any]) -> dict[str, str]:
    return {
        clip(str(name)): MASK if _SECRET_NAME.search(str(name)) else clip(str(value)) for name, value in args.items()
    }
