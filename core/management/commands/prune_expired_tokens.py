"""Retention of tokens: delete expired tokens of every intent but api, in small batches."""

from typing import Any

from django.core.management.base import BaseCommand, CommandParser
from django.utils import timezone

from core.services import tokens_delete_expired
from events.management.commands.prune_expired_events import add_batch_size_argument, batch_size_option
from tokens_service.request_meta import SYSTEM_REQUEST


class Command(BaseCommand):
    help = (
        "Delete expired tokens of every intent but api (each with a model_deleted event). Runs in short "
        "batches, so it is safe to run while the service serves (prune_expired runs it too)."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        add_batch_size_argument(parser)

    def handle(self, *args: Any, **options: Any) -> None:
        tokens = tokens_delete_expired(
            now=timezone.now(), batch_size=batch_size_option(options), request_meta=SYSTEM_REQUEST
        )
        self.stdout.write(f"Deleted {tokens} expired tokens.")
