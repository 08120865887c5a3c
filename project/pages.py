"""The web pages served next to the API (the full chat UI comes with issue 6)."""

from __future__ import annotations

from django.conf import settings
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render


def home(request: HttpRequest) -> HttpResponse:
    """Landing page: who you are, the socket endpoints, and a live connection check."""
    return render(request, "home.html", {"node": settings.NODE_NAME})
