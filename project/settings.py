"""Django settings for Tether; every tunable value comes from project.config."""

from __future__ import annotations

import sys

import dj_database_url

from project.config import BASE_DIR, VAR_DIR, ConfigError, effective_redis_url, load
from project.redis_conn import layer_host, split_urls

try:
    TETHER_CONFIG = load()
except ConfigError as exc:
    # One line naming the variable, then stop: no traceback for an operator typo.
    sys.stderr.write(f"tether: invalid configuration: {exc}\n")
    raise SystemExit(2) from None

_c = TETHER_CONFIG.values

SECRET_KEY: str = _c["SECRET_KEY"]
DEBUG: bool = _c["DEBUG"]
ALLOWED_HOSTS: list[str] = _c["ALLOWED_HOSTS"]
ALLOWED_ORIGINS: list[str] = _c["ALLOWED_ORIGINS"]
# Unset ALLOWED_ORIGINS means "the server's own origin": also accept the port
# daphne actually listens on (tests and `daphne -p N` without PORT).
ALLOWED_ORIGINS_IS_DEFAULT: bool = TETHER_CONFIG.sources["ALLOWED_ORIGINS"] == "default"
CSRF_TRUSTED_ORIGINS: list[str] = ALLOWED_ORIGINS
NODE_NAME: str = _c["NODE_NAME"]
HEARTBEAT_INTERVAL: int = _c["HEARTBEAT_INTERVAL"]
PING_TIMEOUT: int = _c["PING_TIMEOUT"]
MAX_CONNECTIONS: int = _c["MAX_CONNECTIONS"]
MAX_CONNECTIONS_PER_USER: int = _c["MAX_CONNECTIONS_PER_USER"]
MAX_SUBSCRIPTIONS_PER_CLIENT: int = _c["MAX_SUBSCRIPTIONS_PER_CLIENT"]
MAX_FRAME_BYTES: int = _c["MAX_FRAME_BYTES"]
MAX_BODY_CHARS: int = _c["MAX_BODY_CHARS"]
# Attachments (PROTOCOL 10; realtime/chat/uploads.py).
MAX_ATTACHMENT_BYTES: int = _c["MAX_ATTACHMENT_BYTES"]
ATTACHMENT_UNCLAIMED_TTL: int = _c["ATTACHMENT_UNCLAIMED_TTL"]
ATTACHMENT_ACCEL_REDIRECT: str = _c["ATTACHMENT_ACCEL_REDIRECT"]
MEDIA_ROOT: str = _c["MEDIA_ROOT"]
MAX_REPLY_BYTES: int = _c["MAX_REPLY_BYTES"]
OUTBOUND_MAX_FRAMES: int = _c["OUTBOUND_MAX_FRAMES"]
OUTBOUND_MAX_BYTES: int = _c["OUTBOUND_MAX_BYTES"]
RATE_LIMIT_PER_SECOND: int = _c["RATE_LIMIT_PER_SECOND"]
RATE_LIMIT_BURST: int = _c["RATE_LIMIT_BURST"]
TRUSTED_PROXIES: list[str] = _c["TRUSTED_PROXIES"]
HANDSHAKE_RATE_PER_SECOND: int = _c["HANDSHAKE_RATE_PER_SECOND"]
HANDSHAKE_BURST: int = _c["HANDSHAKE_BURST"]
REPLAY_LIMIT: int = _c["REPLAY_LIMIT"]
SYNC_PAGE_CONVERSATIONS: int = _c["SYNC_PAGE_CONVERSATIONS"]
TOPIC_NAMESPACES: dict[str, dict] = _c["TOPIC_NAMESPACES"]
DEMO_FEED: str = _c["DEMO_FEED"]
METRICS_TOKEN: str = _c["METRICS_TOKEN"]
# Connection tokens signed by the application's backend (PROTOCOL 11).
JWT_SECRET: str = _c["JWT_SECRET"]
JWT_PUBLIC_KEY: str = _c["JWT_PUBLIC_KEY"]
JWT_AUDIENCE: str = _c["JWT_AUDIENCE"]
JWT_ISSUER: str = _c["JWT_ISSUER"]
# Events to the application's backend (PROTOCOL 13; realtime/hooks/).
WEBHOOK_URL: str = _c["WEBHOOK_URL"]
WEBHOOK_SECRET: str = _c["WEBHOOK_SECRET"]
WEBHOOK_MAX_AGE: int = _c["WEBHOOK_MAX_AGE"]
WEBHOOK_TIMEOUT: int = _c["WEBHOOK_TIMEOUT"]
WEBHOOK_CONCURRENCY: int = _c["WEBHOOK_CONCURRENCY"]
OUTBOX_DELIVERY: str = _c["OUTBOX_DELIVERY"]
# Web Push (PROTOCOL 14; realtime/push/).
VAPID_PRIVATE_KEY: str = _c["VAPID_PRIVATE_KEY"]
VAPID_SUBJECT: str = _c["VAPID_SUBJECT"]
PUSH_ENDPOINT_ALLOWLIST: list[str] = _c["PUSH_ENDPOINT_ALLOWLIST"]
AUTH_RATE_LIMIT: str = _c["AUTH_RATE_LIMIT"]
QUOTA_MESSAGES: str = _c["QUOTA_MESSAGES"]
QUOTA_CONVERSATIONS: str = _c["QUOTA_CONVERSATIONS"]
QUOTA_MEMBER_ADDS: str = _c["QUOTA_MEMBER_ADDS"]
QUOTA_USER_LOOKUPS: str = _c["QUOTA_USER_LOOKUPS"]
QUOTA_TOPIC_HISTORY: str = _c["QUOTA_TOPIC_HISTORY"]
QUOTA_SUBSCRIPTIONS: str = _c["QUOTA_SUBSCRIPTIONS"]
QUOTA_PUSH_SUBSCRIPTIONS: str = _c["QUOTA_PUSH_SUBSCRIPTIONS"]
QUOTA_UPLOADS: str = _c["QUOTA_UPLOADS"]
SIGNUP_ENABLED: bool = _c["SIGNUP_ENABLED"]
API_TOKEN_TTL: int = _c["API_TOKEN_TTL"]
# The one Redis address (a plain server, or a master found through sentinels) that
# every client builds its connections from (project/redis_conn.py).
REDIS_URL: str = effective_redis_url(_c)
# Its servers, in the ring's order (docs/deployment.md, "Several Redis servers").
REDIS_URLS: list[str] = split_urls(REDIS_URL)
# How redis.asyncio users outside the channel layers (the topic store) get a pool for it.
REDIS_ASYNC_POOL = "project.redis_conn.async_pool"
AUTO_MIGRATE: bool = _c["AUTO_MIGRATE"]
DB_POOL_SIZE: int = _c["DB_POOL_SIZE"]
# Redis connections of the cache's one pool per node (throttles, typing).
CACHE_POOL_SIZE = 8
DB_POOL_MIN: int = _c["DB_POOL_MIN"]
DB_POOL_TIMEOUT: float = _c["DB_POOL_TIMEOUT"]
DB_POOL_MAX_IDLE: float = _c["DB_POOL_MAX_IDLE"]
DB_TRANSACTION_POOLING: bool = _c["DB_TRANSACTION_POOLING"]

# Seconds between the node's maintenance passes (node heartbeat, batched
# last_seen, reaper). Not an operator setting: derived from the heartbeat.
TETHER_SWEEP_SECONDS: float = 1.0
TETHER_MAINTENANCE_SECONDS: float = max(1.0, min(5.0, HEARTBEAT_INTERVAL / 2))

INSTALLED_APPS = [
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "channels",
    "rest_framework",
    "drf_spectacular",
    "drf_spectacular_sidecar",  # Swagger UI's assets, served as our own static files
    "django_prometheus",
    "corsheaders",
    "accounts",
    "realtime",
    "monitoring",
    # The project itself: the commands that span the apps (seed_demo, publish, config_table).
    "project",
]

MIDDLEWARE = [
    "django_prometheus.middleware.PrometheusBeforeMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "csp.middleware.CSPMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "corsheaders.middleware.CorsMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "realtime.rest.parsing.RefuseNulInUrl",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django_prometheus.middleware.PrometheusAfterMiddleware",
]

# Cross-origin requests: `POST /api/auth/ws-ticket/` only, from ALLOWED_ORIGINS
# (accounts/cors.py decides per request; no origin is listed here).
CORS_URLS_REGEX = r"^/api/auth/ws-ticket/$"
CORS_ALLOWED_ORIGINS: list[str] = []

ROOT_URLCONF = "project.urls"
ASGI_APPLICATION = "project.asgi.application"
AUTH_USER_MODEL = "accounts.User"
# Every password check passes the guard against guessing (accounts/guard.py).
AUTHENTICATION_BACKENDS = ["accounts.backends.GuardedModelBackend"]
LOGIN_URL = "/accounts/login/"
LOGIN_REDIRECT_URL = "/"
LOGOUT_REDIRECT_URL = "/accounts/login/"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "project.pages.operator_links",
            ],
        },
    },
]

if _c["DATABASE_URL"]:
    DATABASES = {"default": dj_database_url.parse(_c["DATABASE_URL"], conn_max_age=0)}
else:
    VAR_DIR.mkdir(parents=True, exist_ok=True)
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": VAR_DIR / "tether.sqlite3",
        }
    }
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # WAL and a busy timeout: the sweeper thread and request threads write at once.
    DATABASES["default"]["OPTIONS"] = {
        "timeout": 20,
        "transaction_mode": "IMMEDIATE",
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
    }
elif DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql":
    # One bounded pool of PostgreSQL connections per node (docs/deployment.md,
    # "Connection budget"). Under ASGI every HTTP request runs its synchronous
    # code in a thread of its own: a persistent per-thread connection
    # (CONN_MAX_AGE) outlived its thread and waited for the garbage collector,
    # so a node under concurrent load kept opening connections until the
    # server refused the whole cluster. With the pool, closing a connection
    # hands it back, a node never holds more than DB_POOL_SIZE, and work that
    # cannot get one within DB_POOL_TIMEOUT fails as 503 `unavailable`.
    # The same backend, failing fast while the server is unreachable (project/postgres/).
    DATABASES["default"]["ENGINE"] = "project.postgres"
    DATABASES["default"]["CONN_HEALTH_CHECKS"] = True  # the pool checks what it hands out
    DATABASES["default"].setdefault("OPTIONS", {})
    DATABASES["default"]["OPTIONS"].setdefault("application_name", f"tether:{NODE_NAME}"[:63])
    DATABASES["default"]["OPTIONS"]["pool"] = {
        "min_size": min(DB_POOL_MIN, DB_POOL_SIZE),
        "max_size": DB_POOL_SIZE,
        "timeout": DB_POOL_TIMEOUT,
        # Connections beyond min_size idle this long are closed: the count goes
        # back down when the load stops.
        "max_idle": DB_POOL_MAX_IDLE,
        "name": "tether",
    }
    # The hot paths' raw statements (realtime/node/db.py, bound_cursor) keep the
    # same text whatever the batch, so PostgreSQL parses and plans each once per
    # connection after its 5th run (Django's own queries bind on the client and
    # are never prepared). Behind PgBouncer in transaction mode, consecutive
    # transactions of a connection may run on different server sessions, where a
    # statement prepared on another is unknown ("prepared statement _pg3_0 does
    # not exist"): nothing is prepared then.
    DATABASES["default"]["OPTIONS"]["prepare_threshold"] = None if DB_TRANSACTION_POOLING else 5

if REDIS_URL:
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            "CONFIG": {
                # socket_timeout None: redis-py >= 5 would otherwise abort the
                # layer's blocking pop (https://github.com/django/channels_redis/issues/422).
                # max_connections: redis-py 8 caps a pool at 100 and then fails
                # commands with MaxConnectionsError instead of waiting.
                # Several servers: channels-redis shards channels and groups over
                # them by name (its consistent hash); Tether's own keys follow it.
                "hosts": [
                    layer_host(url, socket_timeout=None, max_connections=2000) for url in REDIS_URLS
                ],
                "capacity": 1000,
                "expiry": 60,
            },
        }
    }
    # The node hub's fan-out (one message per node per publication) rides Redis
    # pub/sub: pushed to each node, no polling under the consumers' shared receive
    # lock. It may drop messages across a reconnect; delivery cursors and the
    # periodic head check fill such gaps from the database.
    CHANNEL_LAYERS["hub"] = {
        "BACKEND": "channels_redis.pubsub.RedisPubSubChannelLayer",
        "CONFIG": {"hosts": [layer_host(url) for url in REDIS_URLS]},
    }
else:
    CHANNEL_LAYERS = {
        "default": {"BACKEND": "channels.layers.InMemoryChannelLayer"},
        "hub": {"BACKEND": "channels.layers.InMemoryChannelLayer"},
    }
HUB_LAYER = "hub"

# The cache holds the password-guessing throttles' counts and the typing
# limit: shared by every node through Redis in production, per process when
# embedded. One bounded pool per node (project/cache_pool.py).
if REDIS_URL:
    CACHES = {
        "default": {
            # Django's own backend takes several servers as a primary and its
            # replicas; Tether's are peers, each key on its server of the ring.
            "BACKEND": (
                "project.cache_shards.ShardedRedisCache"
                if len(REDIS_URLS) > 1
                else "django.core.cache.backends.redis.RedisCache"
            ),
            # A list: Django splits a string at commas, which a sentinel URL has.
            "LOCATION": REDIS_URLS,
            "OPTIONS": {
                "pool_class": "project.cache_pool.SharedPool",
                # JSON, never pickles: nothing read back from Redis can run code.
                "serializer": "project.cache_json.JSONSerializer",
                "max_connections": CACHE_POOL_SIZE,
                "timeout": 5,
                "socket_timeout": 5,
                "socket_connect_timeout": 5,
            },
        }
    }
else:
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "accounts.authentication.BearerTokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_PARSER_CLASSES": ["realtime.rest.parsing.JSONParser"],
    "EXCEPTION_HANDLER": "realtime.rest.errors.api_exception_handler",
    "UNAUTHENTICATED_USER": "django.contrib.auth.models.AnonymousUser",
    # Client address is REMOTE_ADDR (set from X-Forwarded-For by daphne's
    # --proxy-headers behind nginx), never a header a client could forge.
    "NUM_PROXIES": 0,
    "DEFAULT_SCHEMA_CLASS": "realtime.rest.openapi.TetherAutoSchema",
}

# OpenAPI 3 schema at /api/schema/, Swagger UI at /api/docs/ (realtime/rest/openapi.py).
# Public: it describes the public API, nothing more. Swagger UI comes from the
# sidecar package, so the docs page needs no CDN and fits our script-src 'self'.
SPECTACULAR_SETTINGS = {
    "TITLE": "Tether REST API",
    "DESCRIPTION": "JSON over HTTP under /api/ (PROTOCOL section 9). What this schema "
    "forbids is refused, and what it allows is accepted, except where an operation's "
    "description names a rule a schema cannot say (each a 400 with `field`). Unknown "
    "query parameters and body fields are ignored. NUL (U+0000) is refused (400 "
    "`bad_request`) in every URL and in every text the server keeps (names, titles, "
    "ids, message bodies); a lone UTF-16 surrogate in a JSON string is `bad_json`.",
    "VERSION": "1",
    "SERVE_INCLUDE_SCHEMA": False,
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    # One name each for the conversation kinds the bodies share.
    "ENUM_NAME_OVERRIDES": {
        "ConversationKindEnum": ["group", "direct"],
        "GroupKindEnum": ["group"],
        "DirectKindEnum": ["direct"],
    },
    "POSTPROCESSING_HOOKS": [
        "drf_spectacular.hooks.postprocess_schema_enums",
        "realtime.rest.openapi.add_plain_django_paths",
    ],
}

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "/static/"
STATIC_ROOT = VAR_DIR / "staticfiles"
STATIC_ROOT.mkdir(parents=True, exist_ok=True)
# The JavaScript client's one source is its npm package (clients/js/); the
# pages load it from the same place as before, /static/tether/client.js.
STATICFILES_DIRS = [BASE_DIR / "static", ("tether", BASE_DIR / "clients" / "js" / "src")]
# Uploaded files (attachments) through Django's storage API: the file system under
# MEDIA_ROOT unless ATTACHMENT_STORAGE names another backend (docs/deployment.md).
_attachment_options = dict(_c["ATTACHMENT_STORAGE_OPTIONS"])
if _c["ATTACHMENT_STORAGE"] == "django.core.files.storage.FileSystemStorage":
    _attachment_options.setdefault("location", MEDIA_ROOT)
STORAGES = {
    "default": {"BACKEND": _c["ATTACHMENT_STORAGE"], "OPTIONS": _attachment_options},
    "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
}
# Uploads over this size wait in a temporary file rather than in memory (Django's
# default, 2.5 MB, said here because the attachment limit is measured against it).
FILE_UPLOAD_MAX_MEMORY_SIZE = 2621440
# Serve straight from the app directories too, so static files work without
# collectstatic (tests) and without DEBUG (both modes).
WHITENOISE_USE_FINDERS = True
WHITENOISE_AUTOREFRESH = DEBUG

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
SESSION_COOKIE_HTTPONLY = True
SESSION_COOKIE_SAMESITE = "Lax"

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "filters": {
        "redact": {"()": "project.logging.RedactSecretsFilter"},
        "secondary_pipeline_error": {"()": "project.logging.SecondaryPipelineErrorFilter"},
    },
    "formatters": {
        "text": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"},
        "json": {
            "()": "pythonjsonlogger.json.JsonFormatter",
            "fmt": "%(asctime)s %(levelname)s %(name)s %(message)s",
            "rename_fields": {"asctime": "time", "levelname": "level", "name": "logger"},
        },
    },
    "handlers": {
        "console": {
            "class": "logging.StreamHandler",
            "formatter": _c["LOG_FORMAT"],
            "filters": ["redact"],
        }
    },
    "root": {"handlers": ["console"], "level": _c["LOG_LEVEL"]},
    "loggers": {
        "django.db.backends": {"level": "INFO"},
        "daphne": {"level": _c["LOG_LEVEL"]},
        "psycopg": {"filters": ["secondary_pipeline_error"]},
    },
}
CSRF_FAILURE_VIEW = "realtime.rest.errors.csrf_failure"

# Content-Security-Policy on every response (django-csp): scripts and styles
# only from our own origin, so no inline script (and no injected markup) can run.
# connect-src 'self' covers ws:/wss: to the same host in CSP level 3 browsers.
CONTENT_SECURITY_POLICY = {
    "DIRECTIVES": {
        "default-src": ["'self'"],
        "script-src": ["'self'"],
        "style-src": ["'self'"],
        "img-src": ["'self'", "data:"],
        "connect-src": ["'self'"],
        "object-src": ["'none'"],
        "base-uri": ["'self'"],
        "form-action": ["'self'"],
        "frame-ancestors": ["'none'"],
    }
}
