"""One error shape for the REST API: `{"error": "<code>", "detail": "…"}` (PROTOCOL 9)."""

from __future__ import annotations

import logging
from typing import Any

import redis.exceptions
from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from django.db import OperationalError
from django.http import Http404, JsonResponse
from django.views import defaults
from rest_framework import exceptions, status
from rest_framework.response import Response
from rest_framework.views import exception_handler

from realtime.protocol import Code, TetherError

log = logging.getLogger("tether.api")

# TetherError codes → HTTP status.
STATUS_BY_CODE = {
    Code.BAD_JSON: 400,
    Code.BAD_REQUEST: 400,
    Code.UNKNOWN_TYPE: 400,
    Code.TOO_LARGE: 400,
    Code.FORBIDDEN: 403,
    Code.NOT_FOUND: 404,
    Code.RATE_LIMITED: 429,
    Code.LIMIT_EXCEEDED: 409,
    Code.INTERNAL: 500,
}

# Failures of a dependency, not of the request or of Tether: 503, retry later.
UNAVAILABLE = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OperationalError)

_DRF_CODES: dict[type[Exception], str] = {
    exceptions.ParseError: "bad_json",
    exceptions.ValidationError: "bad_request",
    exceptions.NotAuthenticated: "not_authenticated",
    exceptions.AuthenticationFailed: "not_authenticated",
    exceptions.PermissionDenied: "forbidden",
    exceptions.NotFound: "not_found",
    exceptions.MethodNotAllowed: "method_not_allowed",
    exceptions.NotAcceptable: "not_acceptable",
    exceptions.UnsupportedMediaType: "unsupported_media_type",
    exceptions.Throttled: "rate_limited",
}


def _flatten(detail: Any, prefix: str = "") -> str:
    """DRF's nested validation detail as one readable line naming each field."""
    if isinstance(detail, dict):
        parts = []
        for key, value in detail.items():
            name = f"{prefix}.{key}" if prefix else str(key)
            if key == "non_field_errors":
                name = prefix
            parts.append(_flatten(value, name))
        return "; ".join(p for p in parts if p)
    if isinstance(detail, list):
        text = " ".join(_flatten(item) for item in detail)
        return f"{prefix}: {text}" if prefix else text
    return f"{prefix}: {detail}" if prefix else str(detail)


def error_response(code: str, detail: str, http_status: int, **extra: Any) -> Response:
    return Response({"error": code, "detail": detail, **extra}, status=http_status)


def api_exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    """DRF's EXCEPTION_HANDLER: every failure in the `{"error", "detail"}` shape."""
    if isinstance(exc, TetherError):
        response = error_response(
            exc.code, exc.message, STATUS_BY_CODE.get(exc.code, 400), **exc.extra
        )
        if "retry_after" in exc.extra:  # ms in the body; whole seconds for HTTP clients
            response["Retry-After"] = str(-(-exc.extra["retry_after"] // 1000))
        return response
    if isinstance(exc, Http404):
        exc = exceptions.NotFound()
    if isinstance(exc, UNAVAILABLE):
        # A dependency down (the rate limiter's Redis, the database): the caller may
        # retry; /ready/ names which one. Logged, but not as a server bug.
        log.warning("API call failed, a dependency does not answer: %r", exc)
        return error_response(
            "unavailable", f"a service this needs does not answer ({type(exc).__name__})", 503
        )
    if isinstance(exc, RequestDataTooBig):
        limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
        return error_response(Code.TOO_LARGE, f"the request body is over {limit} bytes", 413)
    response = exception_handler(exc, context)
    if response is None:
        log.exception("unhandled API error", exc_info=exc)
        return error_response(Code.INTERNAL, "the server failed", 500)
    code = next((c for t, c in _DRF_CODES.items() if isinstance(exc, t)), "error")
    detail = _flatten(response.data) if isinstance(exc, exceptions.ValidationError) else None
    if detail is None:
        detail = str(getattr(exc, "detail", exc))
    data: dict[str, Any] = {"error": code, "detail": detail}
    if isinstance(exc, exceptions.Throttled) and exc.wait is not None:
        data["retry_after"] = int(exc.wait * 1000)
    if response.status_code == status.HTTP_403_FORBIDDEN and code == "not_authenticated":
        response.status_code = status.HTTP_401_UNAUTHORIZED
    response.data = data
    return response


def is_api(request: Any) -> bool:
    return request.path.startswith(("/api/", "/health", "/ready", "/metrics"))


def not_found(request: Any, exception: Exception | None = None) -> Any:
    """handler404: JSON under /api/, Django's page elsewhere."""
    if is_api(request):
        return JsonResponse(
            {"error": "not_found", "detail": f"no such path: {request.path}"}, status=404
        )
    return defaults.page_not_found(request, exception)


def server_error(request: Any) -> Any:
    """handler500: never a traceback; JSON under /api/."""
    if is_api(request):
        return JsonResponse({"error": "internal", "detail": "the server failed"}, status=500)
    return defaults.server_error(request)


def bad_request_view(request: Any, exception: Exception | None = None) -> Any:
    if is_api(request):
        return JsonResponse({"error": "bad_request", "detail": "bad request"}, status=400)
    return defaults.bad_request(request, exception)


def permission_denied(request: Any, exception: Exception | None = None) -> Any:
    if is_api(request):
        return JsonResponse(
            {"error": "forbidden", "detail": str(exception or "forbidden")}, status=403
        )
    return defaults.permission_denied(request, exception)


def csrf_failure(request: Any, reason: str = "") -> Any:
    """CSRF_FAILURE_VIEW: the REST shape for API callers."""
    if is_api(request):
        return JsonResponse(
            {"error": "forbidden", "detail": f"CSRF check failed: {reason}"}, status=403
        )
    from django.views.csrf import csrf_failure as default_csrf_failure

    return default_csrf_failure(request, reason)
