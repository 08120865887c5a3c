"""The web pages served next to the API: home, sign-up, the chat app, the feeds page and the
staff ops dashboard."""

from __future__ import annotations

from math import ceil
from typing import Any

from django.conf import settings
from django.contrib import admin
from django.contrib.auth import login
from django.contrib.auth import views as auth_views
from django.contrib.auth.decorators import login_required
from django.contrib.staticfiles import finders
from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import render
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.csrf import ensure_csrf_cookie
from django.views.decorators.http import require_http_methods

from accounts import throttles
from accounts.backends import refused_for
from accounts.models import User
from accounts.serializers import RegisterSerializer
from monitoring.stats import OPS_TOPIC
from realtime.rest.permissions import VIEW_OPERATIONS, holds


def home(request: HttpRequest) -> HttpResponse:
    """Landing page: who you are, the socket endpoints, and a live connection check."""
    return render(request, "home.html", {"node": settings.NODE_NAME})


def _safe_next(request: HttpRequest, default: str) -> str:
    target = request.POST.get("next") or request.GET.get("next") or ""
    # Only paths on this site: an open redirect after sign-up would be a phishing aid.
    if target and url_has_allowed_host_and_scheme(
        target, allowed_hosts={request.get_host()}, require_https=request.is_secure()
    ):
        return target
    return default


@require_http_methods(["GET", "POST"])
def signup(request: HttpRequest) -> HttpResponse:
    """Create an account with the same rules as POST /api/auth/register/, then log in."""
    next_url = _safe_next(request, "/chat/")
    errors: list[str] = []
    username = ""
    wait = throttles.refused(request) if request.method == "POST" else None
    if not settings.SIGNUP_ENABLED:
        errors.append("Sign-up is disabled on this server.")
    elif wait is not None:
        errors.append(f"Too many attempts. Try again in {ceil(wait)} seconds.")
    elif request.method == "POST":
        username = request.POST.get("username", "")
        serializer = RegisterSerializer(
            data={"username": username, "password": request.POST.get("password", "")}
        )
        if serializer.is_valid():
            user = User.objects.create_user(
                username=serializer.validated_data["username"],
                password=serializer.validated_data["password"],
            )
            login(request, user, backend="accounts.backends.GuardedModelBackend")
            return HttpResponseRedirect(next_url)
        for field, messages in serializer.errors.items():
            errors.extend(f"{field}: {message}" for message in messages)
    status = 429 if wait is not None else 400 if errors and request.method == "POST" else 200
    context = {"errors": errors, "username": username, "next": next_url}
    return render(request, "registration/signup.html", context, status=status)


@login_required
@ensure_csrf_cookie
def chat(request: HttpRequest) -> HttpResponse:
    """The instant-messaging app; everything after the first paint comes over the socket."""
    return render(request, "chat.html")


def service_worker(request: HttpRequest) -> HttpResponse:
    """static/tether/sw.js at /sw.js: a worker's scope is at most its script's folder,
    and the one that shows pushes (PROTOCOL 14) must cover /chat/. Read on each
    request (small, and browsers check it for updates only now and then) and never
    cached by the browser's HTTP cache, so a new version reaches them."""
    path = finders.find("tether/sw.js")
    if not path:
        raise Http404("no service worker")
    with open(path, "rb") as fh:
        response = HttpResponse(fh.read(), content_type="text/javascript; charset=utf-8")
    response["Cache-Control"] = "no-cache"
    response["Service-Worker-Allowed"] = "/"
    return response


@login_required
@ensure_csrf_cookie
def feeds(request: HttpRequest) -> HttpResponse:
    """Live topic subscriptions on /ws/stream/."""
    return render(request, "feeds.html")


@login_required
@ensure_csrf_cookie
def ops(request: HttpRequest) -> HttpResponse:
    """Live per-node charts fed by the staff topic `ops:stats` (docs/deployment.md, "Monitoring").

    Anonymous visitors go to the login form (login_required); a signed-in user without
    the right gets 403 rather than a login loop, since logging in again cannot help.
    """
    if not holds(request.user, VIEW_OPERATIONS):
        raise PermissionDenied(f"the ops dashboard needs the `{VIEW_OPERATIONS}` permission")
    return render(request, "ops.html", {"topic": OPS_TOPIC})


def operator_links(request: HttpRequest) -> dict[str, Any]:
    """Template context: whether the navigation shows `/ops/`, by the right the page
    asks (called by the template only where it is needed: no query on other pages)."""
    return {"may_view_operations": lambda: holds(request.user, VIEW_OPERATIONS)}


class LoginView(auth_views.LoginView):
    """Django's login form, throttled like the token endpoint against password guessing."""

    def post(self, request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        response = super().post(request, *args, **kwargs)
        wait = refused_for(request)
        if wait is None:
            return response
        # Refused before the password was even checked; the form comes back empty.
        context = self.get_context_data(form=self.get_form_class()(request), throttled=ceil(wait))
        response = self.render_to_response(context)
        response.status_code = 429
        response["Retry-After"] = str(ceil(wait))
        return response


def admin_login(request: HttpRequest) -> HttpResponse:
    """The Django admin's login: Django's own view, 429 while the guard refuses a
    password check (the password is not checked then; the form says it failed)."""
    response = admin.site.login(request)
    wait = refused_for(request)
    if wait is not None:
        response.status_code = 429
        response["Retry-After"] = str(wait)
    return response
