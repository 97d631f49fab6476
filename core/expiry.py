"""Warnings before tokens expire: ``configuration_warning`` events, once per threshold and expiry date."""

from datetime import datetime, timedelta

from django.db import transaction
from django.db.models import F, Q

from core.models import Token
from core.services import API_INTENTS
from events.models import EventAction
from events.services import event_create, model_summary
from tokens_service.request_meta import RequestMeta

# Days before expiry at which a warning is written, widest first.
WARNING_THRESHOLDS_DAYS = (7, 1)


def _due_threshold(expires: datetime, now: datetime) -> int:
    """The tightest threshold (in days) that ``expires`` is within, seen from ``now``."""
    return min(days for days in WARNING_THRESHOLDS_DAYS if expires <= now + timedelta(days=days))


def tokens_warn_expiring(*, now: datetime, request_meta: RequestMeta, batch_size: int = 500) -> int:
    """Write a ``configuration_warning`` event for each API token expiring within 7 days, and again within
    1 day; return how many were written.

    Only unexpired ``api`` and ``app_password`` tokens with ``expiring`` on are considered (verification
    and recovery tokens are short-lived by design). A token is warned once per threshold and expiry
    date: the warned date and threshold are stored on the token with its event, in one transaction per
    batch that locks the rows with ``SKIP LOCKED`` (PostgreSQL), so concurrent runs never warn twice and
    never wait on a request. A token first seen within 1 day gets only the 1-day warning. Changing a
    token's expiry date makes it eligible again. Running it twice writes nothing new.
    """
    widest = timedelta(days=max(WARNING_THRESHOLDS_DAYS))
    tightest = timedelta(days=min(WARNING_THRESHOLDS_DAYS))
    due = (
        Token.objects.filter(
            intent__in=API_INTENTS, expiring=True, expires__gt=now, expires__lte=now + widest, user__is_active=True
        )
        .filter(
            # Never warned for this expiry date, or warned at a wider threshold and now within the tightest.
            Q(expiry_warned_for__isnull=True)
            | ~Q(expiry_warned_for=F("expires"))
            | Q(expiry_warned_days__gt=min(WARNING_THRESHOLDS_DAYS), expires__lte=now + tightest)
        )
        .select_related("user")
        .order_by("expires", "pk")
    )
    total = 0
    seen: set[object] = set()
    while True:
        with transaction.atomic():
            batch = [token for token in due.select_for_update(skip_locked=True, of=("self",))[:batch_size]]
            batch = [token for token in batch if token.pk not in seen]
            if not batch:
                break
            for token in batch:
                seen.add(token.pk)
                assert token.expires is not None
                days = _due_threshold(token.expires, now)
                event_create(
                    action=EventAction.CONFIGURATION_WARNING,
                    actor=None,
                    request_meta=request_meta,
                    app="authentik_core",
                    context={
                        "message": f"Token {token.identifier} expires within {days} day{'s' if days > 1 else ''}.",
                        "model": model_summary(token),
                        "owner": token.user.get_username(),
                        "expires": token.expires.isoformat(),
                        "within_days": days,
                    },
                )
                token.expiry_warned_for, token.expiry_warned_days = token.expires, days
                token.save(update_fields=["expiry_warned_for", "expiry_warned_days"])
            total += len(batch)
    return total
