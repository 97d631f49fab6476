"""Create the event table's monthly partitions ahead of time (PostgreSQL; nothing to do on SQLite)."""

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils import timezone

from events.partitions import (
    DEFAULT_MONTHS_AHEAD,
    EventTableBusy,
    PartitionLayoutError,
    create_months_ahead,
    is_partitioned,
)


class Command(BaseCommand):
    help = (
        "Create the monthly partitions of the event table for this month and the next ones (PostgreSQL). "
        "Rows already written to the catch-all range for those months move into them. Run it daily or "
        "monthly from cron; it is idempotent."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--months-ahead",
            type=int,
            default=DEFAULT_MONTHS_AHEAD,
            help=f"Months after the current one to create (default {DEFAULT_MONTHS_AHEAD}).",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        months_ahead = options["months_ahead"]
        if not 0 <= months_ahead <= 120:
            raise CommandError("--months-ahead must be between 0 and 120.")
        if not is_partitioned():
            self.stdout.write("The event table is not partitioned (SQLite, or not migrated): nothing to do.")
            return
        try:
            created = create_months_ahead(months_ahead, now=timezone.now())
        except (PartitionLayoutError, EventTableBusy) as error:
            raise CommandError(str(error)) from error
        self.stdout.write(f"Created {len(created)} partitions" + (f": {', '.join(created)}." if created else "."))
