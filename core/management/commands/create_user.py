"""Create a user (the password, if any, comes from an environment variable, never an argument)."""

import os
from typing import Any

from django.core.management.base import BaseCommand, CommandError

from core.models import User, UserTypes


class Command(BaseCommand):
    help = "Create a user. The password is read from the variable named by --password-env (default: none)."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("username")
        parser.add_argument("--email", default="")
        parser.add_argument("--name", default="")
        parser.add_argument("--superuser", action="store_true")
        parser.add_argument("--type", default=UserTypes.INTERNAL, choices=UserTypes.values)
        parser.add_argument("--password-env", default="", help="Environment variable holding the password.")

    def handle(self, *args: Any, **options: Any) -> None:
        username = options["username"]
        if User.objects.filter(username=username).exists():
            raise CommandError(f"User {username!r} already exists.")
        password = os.environ.get(options["password_env"]) if options["password_env"] else None
        create = User.objects.create_superuser if options["superuser"] else User.objects.create_user
        user = create(
            username=username, email=options["email"], password=password, name=options["name"], type=options["type"]
        )
        self.stdout.write(f"Created user {user.username} (pk {user.pk}{', superuser' if user.is_superuser else ''}).")
