"""Retention, the one command for cron: ``prune_expired_events`` and ``prune_expired_tokens`` in one run."""

from typing import Any

from django.core.management.base import BaseCommand, CommandParser
from django.utils import timezone

from core.services import tokens_delete_expired
from events.management.commands.prune_expired_events import add_batch_size_argument, batch_size_option
from events.retention import events_prune_expired
from tokens_service.request_meta import SYSTEM_REQUEST


class Command(BaseCommand):
    help = (
        "Delete audit events past their retention date and expired tokens of every intent but api. "
        "Runs in short batches, so it is safe to run (e.g. from cron) while the service serves."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        add_batch_size_argument(parser)

    def handle(self, *args: Any, **options: Any) -> None:
        batch_size = batch_size_option(options)
        # One cut-off for the whole run: rows that expire while it runs wait for the next run, and the
        # loops end even if events keep expiring.
        now = timezone.now()
        events = events_prune_expired(now=now, batch_size=batch_size)
        # Tokens second: their model_deleted events are new and far from expiry (and from the rollup,
        # which counts finished days only).
        tokens = tokens_delete_expired(now=now, batch_size=batch_size, request_meta=SYSTEM_REQUEST)
        self.stdout.write(f"Deleted {events} expired events and {tokens} expired tokens.")
