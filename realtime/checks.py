"""System checks for configuration mistakes (tether.W001 …)."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.checks import Error, Warning, register


@register()
def check_layer_and_database(app_configs: Any, **kwargs: Any) -> list[Warning]:
    warnings = []
    if not settings.REDIS_URL and settings.DATABASES["default"]["ENGINE"].endswith("postgresql"):
        warnings.append(
            Warning(
                "REDIS_URL is unset while DATABASE_URL points at PostgreSQL.",
                hint="The in-memory channel layer reaches one process only: run one daphne "
                "process, or set REDIS_URL to run several nodes.",
                id="tether.W001",
            )
        )
    if settings.DEBUG:
        warnings.append(
            Warning(
                "DEBUG is on.",
                hint="Never in production: error pages show settings and code.",
                id="tether.W002",
            )
        )
    return warnings


@register()
def check_server_patches(app_configs: Any, **kwargs: Any) -> list[Error]:
    """Each patch of a server's internals still fits the installed package."""
    from realtime.transport import patches

    return [
        Error(
            line,
            hint="Install the version pinned in requirements.txt, or update the patch in "
            "realtime/transport/ (docs/architecture.md, 'Server internals').",
            id="tether.E001",
        )
        for line in patches.problems()
    ]
