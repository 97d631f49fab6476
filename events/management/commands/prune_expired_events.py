"""Retention of audit events: delete those past their ``expires``, in small batches."""

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils import timezone

from events.retention import events_prune_expired

DEFAULT_BATCH_SIZE = 500


def add_batch_size_argument(parser: CommandParser) -> None:
    parser.add_argument(
        "--batch-size",
        type=int,
        default=DEFAULT_BATCH_SIZE,
        help=f"Rows deleted per transaction (default {DEFAULT_BATCH_SIZE}).",
    )


def batch_size_option(options: dict[str, Any]) -> int:
    batch_size: int = options["batch_size"]
    if batch_size < 1:
        raise CommandError("--batch-size must be at least 1.")
    return batch_size


class Command(BaseCommand):
    help = (
        "Delete audit events past their retention date and count the finished days into the volume rollup. "
        "Runs in short batches, so it is safe to run while the service serves (prune_expired runs it too)."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        add_batch_size_argument(parser)

    def handle(self, *args: Any, **options: Any) -> None:
        events = events_prune_expired(now=timezone.now(), batch_size=batch_size_option(options))
        self.stdout.write(f"Deleted {events} expired events.")
