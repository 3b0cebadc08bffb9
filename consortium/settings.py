"""One settings module for every environment, driven by environment variables.

Defaults run on one machine with nothing installed (SQLite, in-memory channel
layer, Celery on kombu's filesystem transport). DATABASE_URL and REDIS_URL
switch to PostgreSQL and Redis; see README.md.
"""

import os
import secrets
from datetime import timedelta
from pathlib import Path

import dj_database_url
from csp.constants import NONE, SELF
from django.core.exceptions import ImproperlyConfigured

from consortium.env import env_bool, env_int, env_list, env_str
from consortium.layers import redis_channel_layer

BASE_DIR = Path(__file__).resolve().parent.parent
DATA_DIR = Path(env_str("CONSORTIUM_DATA_DIR", str(BASE_DIR / "data")))
DATA_DIR.mkdir(parents=True, exist_ok=True)

DEBUG = env_bool("DEBUG", False)


def _secret_key() -> str:
    """SECRET_KEY from the environment, else one generated once and kept in the data folder."""
    key = env_str("SECRET_KEY", "")
    if key:
        return key
    path = DATA_DIR / "secret_key"
    if not path.exists():
        path.write_text(secrets.token_urlsafe(50))
        path.chmod(0o600)
    return path.read_text().strip()


SECRET_KEY = _secret_key()
ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", ["127.0.0.1", "localhost"])
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS", [])

INSTALLED_APPS = [
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "rest_framework.authtoken",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "guardian",
    "axes",
    "csp",
    "channels",
    "simple_history",  # governance as it stood at any moment (studies.history)
    # The project itself (label "project"): wiring (Celery, the `<id:pk>` route converter) and the pages that span
    # every app. Its ready() runs first, as it did when it was also the audit app.
    "consortium",
    # The bottom app, the audit log; its label stays "consortium" (tables, migrations, content types unchanged).
    "consortium.audit",
    "sites",
    "studies",
    "aggregation",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "csp.middleware.CSPMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    # Last: turns a refused or locking login into the lockout answer (consortium.logins.lockout_response).
    "axes.middleware.AxesMiddleware",
]

ROOT_URLCONF = "consortium.urls"
ASGI_APPLICATION = "consortium.asgi.application"

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
                "consortium.context_processors.roles",
                "consortium.context_processors.audit_key",
            ],
        },
    },
]


def _database() -> dict:
    url = env_str("DATABASE_URL", f"sqlite:///{DATA_DIR / 'consortium.sqlite3'}")
    try:
        config = dj_database_url.parse(url, conn_max_age=env_int("DB_CONN_MAX_AGE", 0))
    except ValueError as exc:
        raise ImproperlyConfigured(f"DATABASE_URL={url!r} is not a database URL: {exc}") from exc
    if config["ENGINE"] == "django.db.backends.sqlite3":
        # Server, worker and agents are separate processes: take the write lock
        # up front and wait for it instead of failing with "database is locked".
        config["OPTIONS"] = {
            "transaction_mode": "IMMEDIATE",
            "timeout": 30,
            "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
        }
    return config


DATABASES = {"default": _database()}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTHENTICATION_BACKENDS = [
    "axes.backends.AxesStandaloneBackend",  # first: refuses a locked-out account or address before any password check
    "django.contrib.auth.backends.ModelBackend",
    "guardian.backends.ObjectPermissionBackend",
]
ANONYMOUS_USER_NAME = None  # guardian: no anonymous-user row; anonymous users hold no rights

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
]
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "home"
LOGOUT_REDIRECT_URL = "login"

LANGUAGE_CODE = "en"
TIME_ZONE = env_str("TIME_ZONE", "Europe/Amsterdam")
USE_I18N = False
USE_TZ = True

STATIC_URL = "static/"
# Only for `collectstatic` in production; pages are served from the apps through WhiteNoise's finders.
STATIC_ROOT = env_str("STATIC_ROOT", "") or None
STATICFILES_DIRS = [BASE_DIR / "static"]
STATICFILES_FINDERS = [
    "django.contrib.staticfiles.finders.FileSystemFinder",
    "django.contrib.staticfiles.finders.AppDirectoriesFinder",
    "consortium.staticfiles.PlotlyFinder",  # static/vendor/plotly/plotly.min.js from the plotly package
]
WHITENOISE_USE_FINDERS = True  # serve straight from the apps: no collectstatic step for the demo

REDIS_URL = env_str("REDIS_URL", "")
# The cache holds the agent-token throttle's counters: shared through Redis when there is one, else per process.
if REDIS_URL:
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": REDIS_URL}}

if REDIS_URL:
    CHANNEL_LAYERS = {"default": redis_channel_layer(REDIS_URL)}
else:
    CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}
# The in-memory layer cannot carry events published by other processes (the Celery worker): each
# server process then reads the study event logs it is watching this often (0: off; Redis carries them).
EVENTS_RELAY_SECONDS = env_int("EVENTS_RELAY_MS", 0 if REDIS_URL else 500) / 1000

CELERY_BROKER_URL = env_str("CELERY_BROKER_URL", REDIS_URL or "filesystem://")
if CELERY_BROKER_URL == "filesystem://":
    CELERY_BROKER_TRANSPORT = "consortium.broker:Transport"  # atomic message files; see consortium/broker.py
    _queue = DATA_DIR / "celery" / "queue"
    _queue.mkdir(parents=True, exist_ok=True)
    # kombu puts its broadcast (control) exchange files in ./control unless told otherwise.
    # The worker looks for new message files this often (kombu's default is every second): an aggregation
    # sent when a round completes starts within a tenth of a second; a listing of a small folder is cheap.
    CELERY_BROKER_TRANSPORT_OPTIONS = {"data_folder_in": str(_queue), "data_folder_out": str(_queue),
                                       "control_folder": str(DATA_DIR / "celery" / "control"),
                                       "polling_interval": env_int("BROKER_POLL_MS", 100) / 1000}
CELERY_TASK_IGNORE_RESULT = True
# Results only for the tasks that declare them: the shards of a large model's aggregation, which a chord joins.
CELERY_RESULT_BACKEND = env_str("CELERY_RESULT_BACKEND", REDIS_URL or f"file://{DATA_DIR / 'celery' / 'results'}")
if CELERY_RESULT_BACKEND.startswith("file://"):
    (DATA_DIR / "celery" / "results").mkdir(parents=True, exist_ok=True)
# One message at a time per worker process: a worker that dies loses no queued task with it (the
# filesystem transport deletes a message when it hands it out; `aggregation.services.recovery` sends a
# lost aggregation again, but other studies' tasks need not wait for that).
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
# The scheduler opens rounds for active studies and closes those past their deadline.
CELERY_BEAT_SCHEDULE = {
    # A tick not started within one interval is dropped: a busy worker must not work off a backlog of
    # ticks before the aggregation queued behind them (the next tick does the same work anyway).
    "rounds-tick": {"task": "aggregation.tasks.rounds_tick", "schedule": float(env_int("ROUNDS_TICK_SECONDS", 5)),
                    "options": {"expires": float(env_int("ROUNDS_TICK_SECONDS", 5))}},
}

# Signed checkpoints of the audit log (docs/evidence.md). The Ed25519 key: AUDIT_SIGNING_KEY (PEM, or the raw
# 32-byte seed in hex or base64) or AUDIT_SIGNING_KEY_FILE. Without either, only a DEBUG server (the demo) uses
# the key `seed_demo` generates in AUDIT_DEMO_KEY_FILE (git-ignored data folder); otherwise signing fails loudly.
AUDIT_SIGNING_KEY = env_str("AUDIT_SIGNING_KEY", "")
AUDIT_SIGNING_KEY_FILE = env_str("AUDIT_SIGNING_KEY_FILE", "")
AUDIT_DEMO_KEY_FILE = DATA_DIR / "audit_signing_key.pem"
AUDIT_LOG_ID = env_str("AUDIT_LOG_ID", "consortium-audit")
# Seconds between checkpoints of the audit chain's head (0: only on exports); skipped while the log is unchanged.
AUDIT_CHECKPOINT_INTERVAL = env_int("AUDIT_CHECKPOINT_INTERVAL", 300)
if AUDIT_CHECKPOINT_INTERVAL < 0:
    raise ImproperlyConfigured("AUDIT_CHECKPOINT_INTERVAL must be 0 (off) or a number of seconds.")
if AUDIT_CHECKPOINT_INTERVAL:
    CELERY_BEAT_SCHEDULE["audit-checkpoint"] = {"task": "consortium.audit.tasks.audit_checkpoint",
                                                "schedule": float(AUDIT_CHECKPOINT_INTERVAL)}
CELERY_TASK_ALWAYS_EAGER = env_bool("CELERY_TASK_ALWAYS_EAGER", False)
CELERY_TASK_TIME_LIMIT = env_int("CELERY_TASK_TIME_LIMIT", 15 * 60)
CELERY_TASK_SOFT_TIME_LIMIT = env_int("CELERY_TASK_SOFT_TIME_LIMIT", 14 * 60)

REST_FRAMEWORK = {
    # Token first: DRF takes the WWW-Authenticate challenge from the first class, so an anonymous or
    # bad-token request gets 401 (session auth alone would answer 403). Browsers still use their session.
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "rest_framework.authentication.TokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    # JSON only: errors are never HTML, whatever the client accepts (Swagger UI lives at /api/docs/).
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "EXCEPTION_HANDLER": "consortium.api_errors.exception_handler",
    "UNAUTHENTICATED_USER": "django.contrib.auth.models.AnonymousUser",
}

SPECTACULAR_SETTINGS = {
    "TITLE": "Consortium API",
    "DESCRIPTION": "Governance of federated-learning studies across hospital sites.",
    "VERSION": "0.1.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "COMPONENT_SPLIT_REQUEST": True,
    # Routes name ids `<id:pk>` (consortium/request_limits.py): integers that fit a BIGINT.
    "PATH_CONVERTER_OVERRIDES": {"id": {"type": "integer", "format": "int64", "minimum": 0, "maximum": 2**63 - 1}},
    # Three models have a `status` field with different choices: name each enum after its machine.
    "ENUM_NAME_OVERRIDES": {
        "StudyStatusEnum": "studies.choices.StudyStatus",
        "ParticipationStatusEnum": "studies.choices.ParticipationStatus",
        "DpiaStatusEnum": "studies.choices.DpiaStatus",
    },
}

# Federated rounds: where tensors are stored, and the largest update a site may send.
MODEL_STORE = Path(env_str("MODEL_STORE", str(DATA_DIR / "models")))
MAX_UPDATE_BYTES = env_int("MAX_UPDATE_BYTES", 64 * 1024 * 1024)
# Delta is part of each study's protocol now (`dp_delta`, approved by a DPO); a leftover setting would mislead.
if "DP_DELTA" in os.environ:
    raise ImproperlyConfigured("DP_DELTA is no longer a setting: each study's protocol carries its delta (dp_delta).")
# A model above this size (float32 bytes) is aggregated in parameter shards, at most AGGREGATION_MAX_SHARDS,
# in parallel on the workers (`aggregation.services.sharding`).
AGGREGATION_SHARD_BYTES = env_int("AGGREGATION_SHARD_BYTES", 64 * 1024 * 1024)
# A secure-aggregation stage (keys, shares, unmasking) closes after this long with the sites that answered: the
# others count as dropouts. The masked-input stage, where sites train, lasts at least to the round's deadline.
SECAGG_STAGE_SECONDS = env_int("SECAGG_STAGE_SECONDS", 120)
AGGREGATION_MAX_SHARDS = env_int("AGGREGATION_MAX_SHARDS", 8)
DATA_UPLOAD_MAX_MEMORY_SIZE = max(MAX_UPDATE_BYTES + 1024 * 1024, 2_621_440)

# Warn about approvals and agreements expiring within this many days.
EXPIRY_WARNING_DAYS = env_int("EXPIRY_WARNING_DAYS", 30)

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["console"], "level": env_str("LOG_LEVEL", "INFO")},
}

# --- Security -----------------------------------------------------------------------------------------------

# HTTPS=1: the server sits behind a TLS-terminating reverse proxy that sets X-Forwarded-Proto. Then plain HTTP
# is redirected, cookies travel over TLS only, and browsers are told to use HTTPS for a year (HSTS).
HTTPS = env_bool("HTTPS", False)
if HTTPS:
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    SECURE_SSL_REDIRECT = True
    SESSION_COOKIE_SECURE = True
    CSRF_COOKIE_SECURE = True
    SECURE_HSTS_SECONDS = env_int("HSTS_SECONDS", 365 * 24 * 3600)
    SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("HSTS_INCLUDE_SUBDOMAINS", True)
    SECURE_HSTS_PRELOAD = env_bool("HSTS_PRELOAD", True)
    # Turning one off is a deliberate choice for this domain: `check --deploy` need not warn about it.
    SILENCED_SYSTEM_CHECKS = [check for check, on in (("security.W005", SECURE_HSTS_INCLUDE_SUBDOMAINS),
                                                      ("security.W021", SECURE_HSTS_PRELOAD)) if not on]
# Reverse proxies in front of the server that append the client's address to X-Forwarded-For (0: none, the
# peer is the client). Logins and agent tokens are throttled per client address, so this must be right.
PROXY_COUNT = env_int("PROXY_COUNT", 0)
if PROXY_COUNT < 0:
    raise ImproperlyConfigured("PROXY_COUNT must be 0 or more.")

# Content-Security-Policy on every answer: scripts and styles only from our own static files (no inline
# script, no eval: plotly.js runs without either). The dashboard and Swagger UI add 'unsafe-inline' for
# styles only (consortium/content_policy.py): plotly.js and Swagger UI write styles as they draw.
# The websocket is same-origin ('self').
CONTENT_SECURITY_POLICY = {
    "DIRECTIVES": {
        "default-src": [SELF],
        "script-src": [SELF],
        "style-src": [SELF],
        "img-src": [SELF, "data:"],
        "font-src": [SELF],
        "connect-src": [SELF],
        "object-src": [NONE],
        "base-uri": [SELF],
        "form-action": [SELF],
        "frame-ancestors": [NONE],
    },
}

# Logins (the login page, the admin's and the API token endpoint) through django-axes: after
# LOGIN_FAILURE_LIMIT failures for one username, or from one address, within LOGIN_LOCKOUT_MINUTES, further
# attempts are refused (password unchecked) until that long after the last counted failure. Tests may
# override these per test; they are on in every environment.
LOGIN_FAILURE_LIMIT = env_int("LOGIN_FAILURE_LIMIT", 5)
LOGIN_LOCKOUT_MINUTES = env_int("LOGIN_LOCKOUT_MINUTES", 15)
if LOGIN_FAILURE_LIMIT < 1 or LOGIN_LOCKOUT_MINUTES < 1:
    raise ImproperlyConfigured("LOGIN_FAILURE_LIMIT and LOGIN_LOCKOUT_MINUTES must be at least 1.")
AXES_FAILURE_LIMIT = LOGIN_FAILURE_LIMIT
AXES_COOLOFF_TIME = timedelta(minutes=LOGIN_LOCKOUT_MINUTES)
AXES_LOCKOUT_PARAMETERS = ["username", "ip_address"]  # either one locks: per account and per address
# An attempt while locked out does not push the end further away, so the time we tell the user holds.
AXES_RESET_COOL_OFF_ON_FAILURE_DURING_LOCKOUT = False
AXES_CLIENT_IP_CALLABLE = "consortium.throttling.client_ip"
AXES_LOCKOUT_CALLABLE = "consortium.logins.lockout_response"
AXES_DISABLE_ACCESS_LOG = True  # the audit log is the record of logins; no second one outside the chain
AXES_ENABLE_ADMIN = False  # the admin is read-only; unlock with `manage.py axes_reset_username <name>`

# Site agents: after AGENT_TOKEN_FAILURE_LIMIT malformed, unknown or revoked tokens from one address within
# AGENT_TOKEN_LOCKOUT_MINUTES, that address gets 429 with Retry-After until the window ends.
AGENT_TOKEN_FAILURE_LIMIT = env_int("AGENT_TOKEN_FAILURE_LIMIT", 10)
# A new agent token lives this many days unless its admin picks another lifetime; rotating one keeps the old
# token valid for AGENT_TOKEN_ROTATION_OVERLAP_HOURS, so the agent can switch without downtime.
AGENT_TOKEN_LIFETIME_DAYS = env_int("AGENT_TOKEN_LIFETIME_DAYS", 365)
AGENT_TOKEN_ROTATION_OVERLAP_HOURS = env_int("AGENT_TOKEN_ROTATION_OVERLAP_HOURS", 24)
AGENT_TOKEN_LOCKOUT_MINUTES = env_int("AGENT_TOKEN_LOCKOUT_MINUTES", LOGIN_LOCKOUT_MINUTES)
if AGENT_TOKEN_FAILURE_LIMIT < 1 or AGENT_TOKEN_LOCKOUT_MINUTES < 1:
    raise ImproperlyConfigured("AGENT_TOKEN_FAILURE_LIMIT and AGENT_TOKEN_LOCKOUT_MINUTES must be at least 1.")
