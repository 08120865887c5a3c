"""Print the configuration table for the README, generated from project.config."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand

from project.config import markdown_table


class Command(BaseCommand):
    help = "Print the Markdown table of every setting (README's Configuration section)."

    def handle(self, *args: Any, **options: Any) -> None:
        self.stdout.write(markdown_table())
