"""Create a token for a user and print its key once."""

from datetime import datetime
from typing import Any

from django.core.management.base import BaseCommand, CommandError
from django.utils.dateparse import parse_datetime

from core.models import TokenIntents, User
from core.services import token_create
from tokens_service.errors import FieldConflict
from tokens_service.request_meta import SYSTEM_REQUEST


def _parse_expires(value: str | None) -> datetime | None:
    if not value:
        return None
    parsed = parse_datetime(value)
    if parsed is None or parsed.tzinfo is None:
        raise CommandError("--expires must be an ISO 8601 datetime with a UTC offset.")
    return parsed


class Command(BaseCommand):
    help = "Create a token (default intent api, never expiring) and print its key once."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("identifier")
        parser.add_argument("--user", required=True, help="Username of the owner.")
        parser.add_argument("--intent", default=TokenIntents.API, choices=TokenIntents.values)
        parser.add_argument("--description", default="")
        parser.add_argument("--expires", help="ISO 8601 datetime; without it the token does not expire.")

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            user = User.objects.get(username=options["user"])
        except User.DoesNotExist as exc:
            raise CommandError(f"No user {options['user']!r}.") from exc
        expires = _parse_expires(options["expires"])
        try:
            token = token_create(
                actor=None,
                user=user,
                identifier=options["identifier"],
                intent=options["intent"],
                description=options["description"],
                expires=expires,
                expiring=expires is not None,
                request_meta=SYSTEM_REQUEST,
            )
        except FieldConflict as exc:
            raise CommandError(f"{exc.field}: {exc.message}") from exc
        self.stdout.write(f"Created token {token.identifier} for {user.username}. Its key (shown once):")
        self.stdout.write(token.key)
