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
    "django_q",
    "meshline",
    "syncflows",
    "exceptions",
    "reporting",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
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
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {
        "BACKEND": (
            "whitenoise.storage.CompressedManifestStaticFilesStorage"
            if not DEBUG
            else "django.contrib.staticfiles.storage.StaticFilesStorage"
        )
    },
}
WHITENOISE_USE_FINDERS = DEBUG

# Requests to the inbound endpoints larger than this are answered 413 and not
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
# that answers slowly (Tryton takes about 0.6 s a sale) needs several.
MESHLINE_DISPATCH_CONCURRENCY = env_int("MESHLINE_DISPATCH_CONCURRENCY", 4, minimum=1)
# Run the pipeline inside the request instead of on a worker. Tests and the
# ingest command use it; a live console leaves it off.
MESHLINE_SYNC_PIPELINE = env_bool("MESHLINE_SYNC_PIPELINE", False)
MESHLINE_BASE_URL = env_str("MESHLINE_BASE_URL", "http://127.0.0.1:8000")


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
    "handlers": {
        "console": {
            "class": "logging.StreamHandler",
            "formatter": "json" if LOG_FORMAT == "json" else "text",
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
