"""What the REST API refuses before a view sees it: text no store can hold.

- JSON is decoded as on the sockets (`realtime.protocol.loads`).

- JSON may carry lone UTF-16 surrogates (`"\\ud800"`): Python decodes them into
  strings that no UTF-8 codec, database driver or Redis client will encode, so a
  title or message body holding one failed deep in the database as a 500. The
  JSON parser refuses them, once for every endpoint, as `bad_json`.
- PostgreSQL refuses NUL characters in text, so a NUL in a path or query
  parameter (a conversation id, `?username=`) failed as a 500 there. No id or
  name can hold one, so such URLs are refused with `bad_request`.

And what every view reads the same way: a JSON object body (`json_body`) and
integer query parameters (`int_param`).
"""

from __future__ import annotations

import re
from typing import Any

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.utils.deprecation import MiddlewareMixin
from rest_framework import parsers
from rest_framework.exceptions import ParseError
from rest_framework.request import Request

from realtime import protocol
from realtime.protocol import MAX_STORABLE_INT, Code, TetherError, bad_request

_SURROGATE = re.compile("[\ud800-\udfff]")


def _first_surrogate(value: Any) -> str | None:
    """The first lone surrogate in a parsed JSON value's strings (keys included)."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            found = _SURROGATE.search(item)
            if found:
                return found.group()
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return None


class JSONParser(parsers.JSONParser):
    """JSON as the sockets decode it (`protocol.loads`): a body nested too deeply is
    `bad_json` (it was a RecursionError, a 500), a number too large to hold is
    `bad_request` naming its field (it leaked Python's own limit message)."""

    def parse(self, stream: Any, media_type: str | None = None, parser_context: Any = None) -> Any:
        try:
            text = stream.read().decode(parsers.get_encoding(parser_context or {}))
        except UnicodeDecodeError as error:
            raise ParseError(f"JSON parse error - the body is not {error.encoding}") from None
        try:
            data = protocol.loads(text, "the body")
        except TetherError as error:
            if error.code == Code.BAD_JSON:
                raise ParseError(f"JSON parse error - {error.message}") from None
            raise
        surrogate = _first_surrogate(data)
        if surrogate is not None:
            raise ParseError(
                f"JSON parse error - lone surrogate \\u{ord(surrogate):04x} is not text"
            )
        return data


class RefuseNulInUrl(MiddlewareMixin):
    """Middleware: 400 `bad_request` for an API URL whose path or query holds NUL.

    MiddlewareMixin keeps it usable in the async stack without a thread hop.
    """

    def process_request(self, request: HttpRequest) -> HttpResponse | None:
        # Imported here: errors.py imports DRF's views, which import this module's
        # parser through DEFAULT_PARSER_CLASSES.
        from realtime.rest.errors import is_api

        if not is_api(request):
            return None
        if "\x00" in request.path:
            return _nul("path", "the URL path must not contain NUL characters")
        for name, values in request.GET.lists():
            if "\x00" in name or any("\x00" in v for v in values):
                return _nul(name, f"{name}: must not contain NUL characters")
        return None


def _nul(field: str, detail: str) -> JsonResponse:
    return JsonResponse({"error": "bad_request", "detail": detail, "field": field}, status=400)


def int_param(request: Request, name: str, default: int | None = None) -> int | None:
    """A query parameter holding an integer >= 0 a database can compare (`bad_request` else)."""
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise bad_request(name, "must be an integer") from None
    if value < 0:
        raise bad_request(name, "must be >= 0")
    if value > MAX_STORABLE_INT:  # beyond what the database can compare with (a 500 otherwise)
        raise bad_request(name, f"must be at most {MAX_STORABLE_INT}")
    return value


def json_body(request: Request) -> dict[str, Any]:
    """The request's JSON object (`bad_request` for any other JSON value)."""
    if not isinstance(request.data, dict):
        raise bad_request("body", "must be a JSON object")
    return request.data
