"""Meshline settings, read from environment variables through meshline.env.

The defaults are the embedded set-up: an SQLite file in the project folder,
the django-q2 ORM broker and the sandbox ERP. Production sets DATABASE_URL to
PostgreSQL and Q_BROKER to a Redis URL.
"""

from pathlib import Path

from django.core.exceptions import ImproperlyConfigured
from django.core.management.utils import get_random_secret_key

from meshline.env import env_bool, env_database, env_int, env_list, env_str

BASE_DIR = Path(__file__).resolve().parent.parent

DEBUG = env_bool("DEBUG", False)

SECRET_KEY = env_str("SECRET_KEY")
if not SECRET_KEY:
    if not DEBUG:
        raise ImproperlyConfigured(
            "SECRET_KEY is not set. Set SECRET_KEY (or SECRET_KEY_FILE) to a long "
            "random string, or set DEBUG=1 to run with a generated development key."
        )
    # The development key is kept in a file so that every process of the demo
    # (web, worker, management commands) shares it: stored secrets are
    # encrypted under it and must stay readable across restarts.
    _dev_key_file = BASE_DIR / "var" / "dev-secret-key"
    if not _dev_key_file.exists():
        _dev_key_file.parent.mkdir(parents=True, exist_ok=True)
        _dev_key_file.write_text("dev-" + get_random_secret_key(), encoding="utf-8")
        _dev_key_file.chmod(0o600)
    SECRET_KEY = _dev_key_file.read_text(encoding="utf-8").strip()

ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", ["127.0.0.1", "localhost"])
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS", [])

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    "django.contrib.humanize",
    "rest_framework",
    "drf_spectacular",
    "django_filters",
    "django_htmx",
    # Before django_q, so that meshline's qcluster command takes the place of
    # django-q2's (see meshline/shutdown.py).
    "meshline",
    "django_q",
    "syncflows",
    "exceptions",
    "reporting",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "meshline.middleware.ContentSecurityPolicyMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "meshline.middleware.LoginRequiredMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django_htmx.middleware.HtmxMiddleware",
]

ROOT_URLCONF = "meshline.urls"

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
                "meshline.roles.roles_context",
            ],
        },
    },
]

WSGI_APPLICATION = "meshline.wsgi.application"

DATABASES = {
    "default": env_database("DATABASE_URL", f"sqlite:///{BASE_DIR / 'db.sqlite3'}")
}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
]

LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "syncflows:home"
LOGOUT_REDIRECT_URL = "login"

LANGUAGE_CODE = "en-gb"
TIME_ZONE = env_str("TIME_ZONE", "UTC")
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = BASE_DIR / "staticfiles"
STATICFILES_DIRS = [BASE_DIR / "static"]
# Hashed, compressed static files need ``collectstatic`` first; production
# uses them, development and tests serve the source files.
STATIC_MANIFEST = env_bool("MESHLINE_STATIC_MANIFEST", not DEBUG)
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {
        "BACKEND": (
            "whitenoise.storage.CompressedManifestStaticFilesStorage"
            if STATIC_MANIFEST
            else "django.contrib.staticfiles.storage.StaticFilesStorage"
        )
    },
}
WHITENOISE_USE_FINDERS = not STATIC_MANIFEST

# HTTPS-only cookies, HSTS and the proxy header are on whenever DEBUG is off;
# each can be switched off for a plain-HTTP test set-up.
SECURE_SSL_REDIRECT = env_bool("SECURE_SSL_REDIRECT", not DEBUG)
SESSION_COOKIE_SECURE = env_bool("SESSION_COOKIE_SECURE", not DEBUG)
CSRF_COOKIE_SECURE = env_bool("CSRF_COOKIE_SECURE", not DEBUG)
SECURE_HSTS_SECONDS = env_int("SECURE_HSTS_SECONDS", 0 if DEBUG else 31536000, minimum=0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("SECURE_HSTS_INCLUDE_SUBDOMAINS", True)
SECURE_HSTS_PRELOAD = env_bool("SECURE_HSTS_PRELOAD", True)
# The proxy in front of gunicorn terminates TLS and reports it in this header.
SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
SECURE_REFERRER_POLICY = "same-origin"
SESSION_COOKIE_HTTPONLY = True
X_FRAME_OPTIONS = "DENY"
# Only the console's own scripts, styles and images; no CDN, no inline code.
# Plotly sets element styles from script, which style-src does not govern.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "font-src 'self'; connect-src 'self'; frame-ancestors 'none'; base-uri 'self'; "
    "form-action 'self'; object-src 'none'"
)

# Requests to the inbound endpoints larger than this get a 413 response and are not
# stored. Django's own limit is raised to match, so the connector sees the body.
MESHLINE_MAX_DELIVERY_BYTES = env_int("MESHLINE_MAX_DELIVERY_BYTES", 1024 * 1024, minimum=1024)
DATA_UPLOAD_MAX_MEMORY_SIZE = MESHLINE_MAX_DELIVERY_BYTES + 1

# Dispatch tuning: attempts before a transient failure becomes permanent, the
# first backoff in seconds (doubled each attempt, with full jitter), and how
# long a claimed command may stay "sent" before the sweep re-queues it.
MESHLINE_MAX_ATTEMPTS = env_int("MESHLINE_MAX_ATTEMPTS", 8, minimum=1)
MESHLINE_BACKOFF_BASE_SECONDS = env_int("MESHLINE_BACKOFF_BASE_SECONDS", 2, minimum=0)
MESHLINE_BACKOFF_MAX_SECONDS = env_int("MESHLINE_BACKOFF_MAX_SECONDS", 900, minimum=1)
MESHLINE_CLAIM_TIMEOUT_SECONDS = env_int("MESHLINE_CLAIM_TIMEOUT_SECONDS", 300, minimum=5)
# Threads per worker that send commands of different records at once; an ERP
# that responds slowly (Tryton takes about 0.6 s a sale) needs several.
MESHLINE_DISPATCH_CONCURRENCY = env_int("MESHLINE_DISPATCH_CONCURRENCY", 4, minimum=1)
# Run the pipeline inside the request instead of on a worker. Tests and the
# ingest command use it; a live console leaves it off.
MESHLINE_SYNC_PIPELINE = env_bool("MESHLINE_SYNC_PIPELINE", False)
MESHLINE_BASE_URL = env_str("MESHLINE_BASE_URL", "http://127.0.0.1:8000")
# The store for the pace of CRM API calls. "auto" shares it between all worker
# processes (in Redis when Q_BROKER is a Redis URL, else in PostgreSQL), except
# on SQLite, where each process keeps its own. "process" keeps it per process.
MESHLINE_CRM_PACER = env_str("MESHLINE_CRM_PACER", "auto")
if MESHLINE_CRM_PACER not in ("auto", "process"):
    raise ImproperlyConfigured(
        f"MESHLINE_CRM_PACER={MESHLINE_CRM_PACER!r} is not supported: use auto "
        "or process."
    )


def _q_cluster() -> dict:
    broker = env_str("Q_BROKER", "orm")
    base = {
        "name": "meshline",
        "workers": env_int("Q_WORKERS", 2, minimum=1),
        "timeout": 120,
        "retry": 180,
        "max_attempts": 1,
        "catch_up": False,
        "ack_failures": True,
        "save_limit": 1000,
        "poll": 0.2,
        "label": "Background tasks",
    }
    if broker == "orm":
        return {**base, "orm": "default"}
    if broker.startswith(("redis://", "rediss://", "unix://")):
        return {**base, "redis": broker}
    raise ImproperlyConfigured(
        f"Q_BROKER={broker!r} is not supported: use orm or a redis:// URL."
    )


Q_CLUSTER = _q_cluster()

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "DEFAULT_FILTER_BACKENDS": ["django_filters.rest_framework.DjangoFilterBackend"],
    "DEFAULT_PAGINATION_CLASS": "rest_framework.pagination.LimitOffsetPagination",
    "PAGE_SIZE": 50,
    "EXCEPTION_HANDLER": "meshline.api.exception_handler",
    "COERCE_DECIMAL_TO_STRING": True,
}

SPECTACULAR_SETTINGS = {
    "TITLE": "Meshline API",
    "DESCRIPTION": "Inbound CRM deliveries, ERP commands, exception cases and traces.",
    "VERSION": "1",
    "SERVE_INCLUDE_SCHEMA": False,
    "ENUM_NAME_OVERRIDES": {
        "CommandStateEnum": "syncflows.models.commands.Command.State",
        "InboundEventStatusEnum": "syncflows.models.events.InboundEvent.Status",
    },
}

LOG_FORMAT = env_str("LOG_FORMAT", "text")
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "text": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"},
        "json": {"()": "meshline.logging.JsonFormatter"},
    },
    # Puts the ids of meshline.logging.log_context() on every record, from
    # any logger.
    "filters": {"log_context": {"()": "meshline.logging.LogContextFilter"}},
    "handlers": {
        "console": {
            "class": "logging.StreamHandler",
            "formatter": "json" if LOG_FORMAT == "json" else "text",
            "filters": ["log_context"],
        }
    },
    "root": {"handlers": ["console"], "level": env_str("LOG_LEVEL", "INFO")},
    "loggers": {
        "django.db.backends": {"level": "WARNING"},
        "django_q": {"level": "WARNING"},
        # common-expression-language logs every failing custom function at
        # WARNING; the pipeline records those failures itself, with ids.
        "cel": {"level": "ERROR"},
    },
}

EMAIL_BACKEND = env_str("EMAIL_BACKEND", "django.core.mail.backends.console.EmailBackend")
DEFAULT_FROM_EMAIL = env_str("DEFAULT_FROM_EMAIL", "meshline@localhost")

# Exception lanes. SLA clocks of lanes that count business hours use this
# calendar: opening hours as HH:MM-HH:MM in the time zone, working days as
# three-letter English day names, and holidays as ISO dates (YYYY-MM-DD).
MESHLINE_BUSINESS_TIME_ZONE = env_str("MESHLINE_BUSINESS_TIME_ZONE", TIME_ZONE)
MESHLINE_BUSINESS_HOURS = env_str("MESHLINE_BUSINESS_HOURS", "09:00-17:00")
MESHLINE_BUSINESS_DAYS = env_list("MESHLINE_BUSINESS_DAYS", ["mon", "tue", "wed", "thu", "fri"])
MESHLINE_HOLIDAYS = env_list("MESHLINE_HOLIDAYS", [])
# Escalation: a reminder this many minutes before the SLA is breached, the
# reassignment to the Triage Lead group at the breach, and an executive
# notification this many minutes after the breach.
MESHLINE_REMINDER_BEFORE_MINUTES = env_int("MESHLINE_REMINDER_BEFORE_MINUTES", 120, minimum=1)
MESHLINE_EXECUTIVE_AFTER_MINUTES = env_int("MESHLINE_EXECUTIVE_AFTER_MINUTES", 480, minimum=1)
MESHLINE_EXECUTIVE_EMAILS = env_list("MESHLINE_EXECUTIVE_EMAILS", [])
# A Slack-compatible incoming webhook URL is a secret: set it through
# MESHLINE_SLACK_WEBHOOK_URL_FILE in production. Empty sends no Slack messages.
MESHLINE_SLACK_WEBHOOK_URL = env_str("MESHLINE_SLACK_WEBHOOK_URL", "")
MESHLINE_NOTIFICATION_MAX_ATTEMPTS = env_int("MESHLINE_NOTIFICATION_MAX_ATTEMPTS", 5, minimum=1)
# Bulk actions on more cases than this run on a worker, with a progress bar.
MESHLINE_BULK_INLINE_LIMIT = env_int("MESHLINE_BULK_INLINE_LIMIT", 25, minimum=0)

# Reporting: reconciliation and schema drift.
# Orders reconciled per transaction; a crash loses at most one batch of work.
MESHLINE_RECONCILIATION_BATCH = env_int("MESHLINE_RECONCILIATION_BATCH", 500, minimum=1)
# Days of synced orders that the nightly reconciliation checks.
MESHLINE_RECONCILIATION_DAYS = env_int("MESHLINE_RECONCILIATION_DAYS", 35, minimum=1)
# Hours of record changes that the nightly drift check compares.
MESHLINE_DRIFT_WINDOW_HOURS = env_int("MESHLINE_DRIFT_WINDOW_HOURS", 24, minimum=1)

# Brief lifecycle. MESHLINE_CANARY_POLICY decides when an approved brief
# version must run as a canary for one business unit before it can become
# active everywhere: "schema_change" (when its command schema differs from
# the active version's), "always" or "never".
MESHLINE_CANARY_POLICY = env_str("MESHLINE_CANARY_POLICY", "schema_change")
if MESHLINE_CANARY_POLICY not in ("schema_change", "always", "never"):
    raise ImproperlyConfigured(
        f"MESHLINE_CANARY_POLICY={MESHLINE_CANARY_POLICY!r} is invalid: use "
        "schema_change, always or never."
    )

# Security and data protection.
# Logins go through the lock-out backend (meshline/lockout.py): after this many
# failed logins within the window, the user name (or, with the per-IP limit,
# the client IP) is locked out for the lock-out period, in minutes.
AUTHENTICATION_BACKENDS = ["meshline.lockout.LockoutModelBackend"]
MESHLINE_LOGIN_MAX_FAILURES = env_int("MESHLINE_LOGIN_MAX_FAILURES", 5, minimum=1)
MESHLINE_LOGIN_MAX_FAILURES_PER_IP = env_int(
    "MESHLINE_LOGIN_MAX_FAILURES_PER_IP", 20, minimum=1
)
MESHLINE_LOGIN_FAILURE_WINDOW_MINUTES = env_int(
    "MESHLINE_LOGIN_FAILURE_WINDOW_MINUTES", 15, minimum=1
)
MESHLINE_LOGIN_LOCKOUT_MINUTES = env_int("MESHLINE_LOGIN_LOCKOUT_MINUTES", 15, minimum=1)
# The request header (as a META key) that contains the client IP when a proxy sits
# in front of gunicorn, for example HTTP_X_FORWARDED_FOR. Empty uses REMOTE_ADDR.
MESHLINE_CLIENT_IP_HEADER = env_str("MESHLINE_CLIENT_IP_HEADER", "")
# The API takes a console session or an API token (meshline/authentication.py).
# Session comes first, so an anonymous request still gets a 403 response.
REST_FRAMEWORK["DEFAULT_AUTHENTICATION_CLASSES"] = [
    "rest_framework.authentication.SessionAuthentication",
    "meshline.authentication.TokenAuthentication",
]
REST_FRAMEWORK["DEFAULT_PERMISSION_CLASSES"] = ["meshline.authentication.DefaultPolicy"]
# Days that raw delivery bodies and ledger payloads keep their personal fields;
# after that the retention job (manage.py retention, run daily) removes them.
MESHLINE_RETENTION_DAYS = env_int("MESHLINE_RETENTION_DAYS", 180, minimum=1)
