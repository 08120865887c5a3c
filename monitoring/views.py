"""Health and readiness (PROTOCOL 9)."""

from __future__ import annotations

import asyncio
import functools
import secrets
from collections.abc import Callable
from typing import Any

from asgiref.sync import sync_to_async
from channels.layers import get_channel_layer
from django.conf import settings
from django.db import connection
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django_prometheus.exports import ExportToDjangoView

READY_TIMEOUT = 2.0
SAFE_METHODS = ("GET", "HEAD")


def get_or_head(view: Callable[..., Any]) -> Callable[..., Any]:
    """Django's `require_safe`, answering other methods in the API's JSON error shape
    (its 405 has an empty body), sync or async like the view."""

    def refuse(request: HttpRequest) -> JsonResponse:
        response = JsonResponse(
            {"error": "method_not_allowed", "detail": f"{request.method}: use GET or HEAD"},
            status=405,
        )
        response["Allow"] = ", ".join(SAFE_METHODS)
        return response

    if asyncio.iscoroutinefunction(view):

        @functools.wraps(view)
        async def async_wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> Any:
            if request.method not in SAFE_METHODS:
                return refuse(request)
            return await view(request, *args, **kwargs)

        return async_wrapper

    @functools.wraps(view)
    def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> Any:
        if request.method not in SAFE_METHODS:
            return refuse(request)
        return view(request, *args, **kwargs)

    return wrapper


@csrf_exempt  # a POST gets a JSON 405, not a CSRF page
@get_or_head
async def health(request: HttpRequest) -> JsonResponse:
    """200 while the process serves; touches nothing else."""
    return JsonResponse({"status": "ok", "node": settings.NODE_NAME})


def _query_database() -> None:
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
            cursor.fetchone()
    finally:
        connection.close()


async def check_database() -> None:
    # thread_sensitive=False: a hung database must not block the shared ORM thread.
    await sync_to_async(_query_database, thread_sensitive=False)()


async def check_channel_layer() -> None:
    """A round trip through the layer: send to a fresh channel and receive it."""
    layer = get_channel_layer()
    if layer is None:
        raise RuntimeError("no channel layer configured")
    channel = await layer.new_channel()
    token = secrets.token_hex(8)
    await layer.send(channel, {"type": "ready.check", "token": token})
    message = await layer.receive(channel)
    if message.get("token") != token:
        raise RuntimeError("the channel layer returned another message")


async def _run_check(check: Any) -> str | None:
    try:
        await asyncio.wait_for(check(), timeout=READY_TIMEOUT)
    except TimeoutError:
        return f"no answer within {READY_TIMEOUT:g} s"
    except Exception as exc:  # any failure makes the node not ready
        return f"{type(exc).__name__}: {exc}"[:300]
    return None


def _nobody(user: Any) -> bool:
    return False


# Which signed-in users are operators here. The rule (a staff account with the right
# to view operations) is realtime's, a package above this one: realtime/apps.py hands
# it over at start; until then no session is an operator.
_operator_rule: Callable[[Any], bool] = _nobody


def set_operator_rule(rule: Callable[[Any], bool]) -> None:
    """Use `rule(user)` (blocking: it may read permissions) to tell operators' sessions."""
    global _operator_rule
    _operator_rule = rule


async def _operator(request: HttpRequest) -> bool:
    """An operator's session, or the `METRICS_TOKEN` bearer that monitoring systems hold."""
    token = settings.METRICS_TOKEN
    if token:
        scheme, _, given = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() == "bearer" and secrets.compare_digest(given.strip(), token):
            return True
    try:
        user = await request.auser()
        return bool(user.is_authenticated) and await sync_to_async(_operator_rule)(user)
    except Exception:  # the session store or the database is what is down: nobody is known
        return False


@csrf_exempt
@get_or_head
async def ready(request: HttpRequest) -> JsonResponse:
    """200 when the database and the channel layer answer in time, else 503 naming what
    failed (and why, for operators)."""
    db_error, layer_error = await asyncio.gather(
        _run_check(check_database), _run_check(check_channel_layer)
    )
    failed = [name for name, err in (("database", db_error), ("channel_layer", layer_error)) if err]
    # Which check failed is for anyone (a load balancer); why, with host names and
    # driver messages, only for operators.
    shown = not failed or await _operator(request)
    checks = {
        "database": "ok" if db_error is None else (db_error if shown else "failed"),
        "channel_layer": "ok" if layer_error is None else (layer_error if shown else "failed"),
    }
    body = {
        "status": "unavailable" if failed else "ready",
        "node": settings.NODE_NAME,
        "checks": checks,
    }
    if failed:
        body["failed"] = failed
    return JsonResponse(body, status=503 if failed else 200)


@csrf_exempt
@get_or_head
def metrics(request: HttpRequest) -> HttpResponse:
    """Prometheus text format; with `METRICS_TOKEN` set, only for its bearer."""
    token = settings.METRICS_TOKEN
    if token:
        scheme, _, given = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not secrets.compare_digest(given.strip(), token):
            response = JsonResponse(
                {"error": "not_authenticated", "detail": "Authorization: Bearer <METRICS_TOKEN>"},
                status=401,
            )
            response["WWW-Authenticate"] = 'Bearer realm="metrics"'
            return response
    return ExportToDjangoView(request)
