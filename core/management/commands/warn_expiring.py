"""Cron job: audit events warning that tokens expire within 7 days and within 1 day."""

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils import timezone

from core.expiry import tokens_warn_expiring
from tokens_service.request_meta import SYSTEM_REQUEST


class Command(BaseCommand):
    help = (
        "Write a configuration_warning event for each API token expiring within 7 days, and again within "
        "1 day; once each per expiry date, so it can run from cron as often as wanted."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--batch-size", type=int, default=500, help="Tokens per transaction (default 500).")

    def handle(self, *args: Any, **options: Any) -> None:
        if options["batch_size"] < 1:
            raise CommandError("--batch-size must be at least 1.")
        written = tokens_warn_expiring(
            now=timezone.now(), request_meta=SYSTEM_REQUEST, batch_size=options["batch_size"]
        )
        self.stdout.write(f"Wrote {written} expiry warnings.")
