"""Graft's settings: everything comes from the environment, in this one file.

Every value has a default that works on one machine with nothing installed (SQLite and
the embedded Redis under ``var/``). Scaling out is a matter of setting ``DATABASE_URL``,
``CELERY_BROKER_URL``, ``GRAFT_DATA_DIR`` and one ``SECRET_KEY`` for all (see README). A
malformed value raises ``ImproperlyConfigured`` naming the variable, at start-up rather
than mid-request.
"""

from __future__ import annotations

import logging
import os
import secrets
import tempfile
from datetime import timedelta
from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def env_str(name: str, default: str) -> str:
    return os.environ.get(name, default)


def env_bool(name: str, default: bool) -> bool:
    raw = os.environ.get(name)
    if raw is None:
        return default
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ImproperlyConfigured(f"{name} must be true or false, got {raw!r}")


def env_int(name: str, default: int, *, minimum: int | None = None) -> int:
    raw = os.environ.get(name)
    if raw is None:
        return default
    try:
        value = int(raw.strip())
    except ValueError:
        raise ImproperlyConfigured(f"{name} must be an integer, got {raw!r}") from None
    if minimum is not None and value < minimum:
        raise ImproperlyConfigured(f"{name} must be at least {minimum}, got {value}")
    return value


def env_list(name: str, default: list[str]) -> list[str]:
    raw = os.environ.get(name)
    if raw is None:
        return default
    return [item.strip() for item in raw.split(",") if item.strip()]


def env_path(name: str, default: Path) -> Path:
    raw = os.environ.get(name)
    if raw is None or not raw.strip():
        return default
    path = Path(raw).expanduser()
    return path if path.is_absolute() else (BASE_DIR / path)


def env_log_level(name: str, default: str) -> str:
    """A logging level name in any case (gunicorn.conf.py passes the same value lower-cased)."""
    raw = env_str(name, default)
    value = raw.strip().upper()
    if value not in logging.getLevelNamesMapping():
        raise ImproperlyConfigured(
            f"{name} must be DEBUG, INFO, WARNING, ERROR or CRITICAL, got {raw!r}"
        )
    return value


def _secret_key(var_dir: Path) -> str:
    """SECRET_KEY from the environment, else one generated once and kept under var/."""
    if os.environ.get("SECRET_KEY"):
        return os.environ["SECRET_KEY"]
    key_file = var_dir / "secret_key"
    try:
        if not key_file.exists():
            _create_once(key_file, secrets.token_urlsafe(50))
        return key_file.read_text().strip()
    except OSError as exc:
        raise ImproperlyConfigured(
            f"GRAFT_VAR_DIR ({var_dir}) cannot keep the generated secret key ({exc}): "
            "make it a writable directory, or set SECRET_KEY"
        ) from None


def _create_once(path: Path, text: str) -> None:
    """Create ``path`` (mode 0600) holding ``text`` unless it exists, whole or not at all:
    processes that start together (gunicorn's workers, a Celery worker) must all read the
    one key that won, never a half-written file or an error."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
        os.link(temporary, path)
    except FileExistsError:
        pass
    finally:
        os.unlink(temporary)


def _default_hosts(listen: str) -> list[str]:
    """Loopback names, plus the address `make run` listens on, so the URL it prints works.
    A wildcard (0.0.0.0, ::) is no host name: other machines need one in ALLOWED_HOSTS."""
    hosts = ["localhost", "127.0.0.1", "[::1]"]
    address = listen.strip("[]")
    if address not in ("", "0.0.0.0", "::", "127.0.0.1", "::1", "localhost"):
        hosts.append(f"[{address}]" if ":" in address else address)
    return hosts


def _database(url: str) -> dict:
    try:
        config = dj_database_url.parse(url, conn_max_age=60, conn_health_checks=True)
    except Exception as exc:  # dj-database-url raises several kinds
        raise ImproperlyConfigured(f"DATABASE_URL is not a database URL: {exc}") from None
    if not config.get("ENGINE"):
        raise ImproperlyConfigured(f"DATABASE_URL names an unknown database: {url!r}")
    if config["ENGINE"].endswith("sqlite3"):
        # Several processes (web, worker) share the file: wait for locks instead of failing.
        # WAL lets readers run beside the one writer, and synchronous=NORMAL makes a commit
        # a write instead of an fsync: each logged prediction costs ~0.1 ms, not ~20 ms.
        config["OPTIONS"] = {
            "timeout": 20,
            "transaction_mode": "IMMEDIATE",
            "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
        }
        # Connections persist (conn_max_age above, as on PostgreSQL): a fresh one per request
        # ran both PRAGMAs, and closing the last one checkpoints the WAL (6 ms per classified
        # photo in one thread; ~5% more classifications/s under bench/serve_load.py's load).
        config["TEST"] = {"NAME": str(VAR_DIR / "test-db.sqlite3")}
    return config


# --- Core ---------------------------------------------------------------------------

VAR_DIR = env_path("GRAFT_VAR_DIR", BASE_DIR / "var")
DEBUG = env_bool("DEBUG", True)
SECRET_KEY = _secret_key(VAR_DIR)
GRAFT_HOST = env_str("GRAFT_HOST", "127.0.0.1").strip()
ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", _default_hosts(GRAFT_HOST))
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS", [])
# In production Graft sits behind a TLS-terminating proxy (README) and gets plain HTTP: the
# proxy's X-Forwarded-Proto says the browser used HTTPS, without which CSRF's origin check
# refuses every form post (https://host is not http://host). A client that sends the header
# itself only changes how its own request is judged: no redirect or cookie depends on it.
SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
# Opt-in: behind HTTPS, browsers then never send the session or CSRF cookie over plain HTTP.
# Off by default, or `make run`'s http:// URL could not keep anyone logged in.
GRAFT_SECURE_COOKIES = env_bool("GRAFT_SECURE_COOKIES", False)
SESSION_COOKIE_SECURE = GRAFT_SECURE_COOKIES
CSRF_COOKIE_SECURE = GRAFT_SECURE_COOKIES
GRAFT_PORT = env_int("GRAFT_PORT", 8000, minimum=1)
if GRAFT_PORT > 65535:
    raise ImproperlyConfigured(f"GRAFT_PORT must be a TCP port (1-65535), got {GRAFT_PORT}")

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django.contrib.humanize",
    "rest_framework",
    "rest_framework.authtoken",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "axes",
    "webapp",
]

MIDDLEWARE = [
    # First: answers /healthz whatever the Host header (probes send the pod's IP).
    "webapp.middleware.health_check_middleware",
    "django.middleware.security.SecurityMiddleware",
    # Serves static files under gunicorn too (no separate web server needed).
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    # Refuses bodies larger than any upload before the CSRF check parses (and spools) them.
    "webapp.middleware.request_size_middleware",
    "django.contrib.auth.middleware.LoginRequiredMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    # Last, as django-axes asks: turns a login refused for too many failures into the
    # lockout page.
    "axes.middleware.AxesMiddleware",
]

ROOT_URLCONF = "webapp.urls"
WSGI_APPLICATION = "webapp.wsgi.application"

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
            ],
        },
    },
]

DATABASES = {
    "default": _database(
        env_str("DATABASE_URL", f"sqlite:///{VAR_DIR / 'graft.sqlite3'}"),
    )
}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
AUTHENTICATION_BACKENDS = [
    # First: refuses a locked-out (username, address) before the password is checked.
    "axes.backends.AxesStandaloneBackend",
    "django.contrib.auth.backends.ModelBackend",
]
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "dashboard"
LOGOUT_REDIRECT_URL = "login"

LANGUAGE_CODE = "en-us"
TIME_ZONE = env_str("TIME_ZONE", "UTC")
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
# No STATIC_ROOT: nothing is collected (see WHITENOISE_USE_FINDERS), and WhiteNoise warns
# at every worker boot about a STATIC_ROOT folder that does not exist.
STATIC_ROOT = None
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedStaticFilesStorage"},
}
# Serve straight from the apps' static folders, so no collectstatic step is needed.
WHITENOISE_USE_FINDERS = True
WHITENOISE_AUTOREFRESH = DEBUG
MEDIA_URL = "media/"

# --- Graft's data -------------------------------------------------------------------

# Datasets, model versions and the feature cache live here; on several machines this
# must be storage that every web and worker process sees at the same path.
GRAFT_DATA_DIR = env_path("GRAFT_DATA_DIR", VAR_DIR / "data")
MEDIA_ROOT = GRAFT_DATA_DIR / "media"
GRAFT_MAX_IMAGE_MB = env_int("GRAFT_MAX_IMAGE_MB", 20, minimum=1)
GRAFT_MAX_ZIP_MB = env_int("GRAFT_MAX_ZIP_MB", 2048, minimum=1)
GRAFT_MAX_ZIP_FILES = env_int("GRAFT_MAX_ZIP_FILES", 100_000, minimum=1)
GRAFT_MAX_UNZIPPED_MB = env_int("GRAFT_MAX_UNZIPPED_MB", 8192, minimum=1)
GRAFT_IMPORT_ROOTS = [Path(p) for p in env_list("GRAFT_IMPORT_ROOTS", [])]
DATA_UPLOAD_MAX_MEMORY_SIZE = GRAFT_MAX_IMAGE_MB * 1024 * 1024
FILE_UPLOAD_MAX_MEMORY_SIZE = 5 * 1024 * 1024
DATA_UPLOAD_MAX_NUMBER_FILES = env_int("GRAFT_MAX_UPLOAD_FILES", 1000, minimum=1)

# --- Serving and predictions ---------------------------------------------------------

# LiteRT threads per web process; 1 suits several gunicorn workers sharing the cores.
GRAFT_SERVING_THREADS = env_int("GRAFT_SERVING_THREADS", 1, minimum=1)
# Keep uploaded photos with their predictions (needed to add corrections to a dataset);
# otherwise only their sha256 is stored.
GRAFT_KEEP_PREDICTION_IMAGES = env_bool("GRAFT_KEEP_PREDICTION_IMAGES", False)
# Predictions (and finished batch jobs) older than this are deleted (checked hourly, see
# CELERY_BEAT_SCHEDULE); 0 keeps them.
GRAFT_PREDICTION_RETENTION_DAYS = env_int("GRAFT_PREDICTION_RETENTION_DAYS", 90, minimum=0)


# int8 serving: true, false, or auto (the default: on where the CPU has int8 dot-product
# instructions, the only CPUs where the int8 model is faster; see classifier.cpu). On, the
# worker calibrates a full-integer int8 copy of every new version
# (``worker.tasks.quantize_version``, on the default queue) and keeps it only when its
# accuracy on the version's validation photos is at most 0.01 below the float32 model's;
# the web process and batches then classify with the int8 model of a version whose copy
# was accepted (float32 otherwise). GRAFT_INT8_AUTO says why auto chose what it did (None
# when set explicitly). Web and worker processes on different machines: set it explicitly.
def _int8_setting() -> tuple[bool, str | None]:
    if os.environ.get("GRAFT_INT8", "auto").strip().lower() != "auto":
        return env_bool("GRAFT_INT8", False), None
    from classifier.cpu import int8_dot_product

    feature = int8_dot_product()
    if feature is None:
        return False, "this CPU has no int8 dot-product instructions"
    return True, f"this CPU has int8 dot products ({feature})"


GRAFT_INT8, GRAFT_INT8_AUTO = _int8_setting()

# --- Celery (the job queue; the database row stays the source of truth) -------------

# The embedded Redis (`make run`) listens on a Unix socket under var/.
EMBEDDED_REDIS_SOCKET = VAR_DIR / "run" / "redis.sock"
# Empty counts as unset: Celery itself would take "" for AMQP on localhost.
CELERY_BROKER_URL = os.environ.get("CELERY_BROKER_URL", "").strip()
USES_EMBEDDED_REDIS = not CELERY_BROKER_URL
if USES_EMBEDDED_REDIS:
    CELERY_BROKER_URL = f"redis+socket://{EMBEDDED_REDIS_SOCKET}"
elif not CELERY_BROKER_URL.startswith(("redis://", "rediss://", "redis+socket://", "sentinel://")):
    raise ImproperlyConfigured(
        f"CELERY_BROKER_URL must be a Redis URL such as redis://host:6379/0, "
        f"got {CELERY_BROKER_URL!r}"
    )
CELERY_RESULT_BACKEND = os.environ.get("CELERY_RESULT_BACKEND", "").strip() or CELERY_BROKER_URL
# The longest a training job may run; Redis's visibility timeout must exceed it, or an
# unacknowledged (late-ack) job would be delivered to a second worker while it runs.
GRAFT_TRAINING_TIME_LIMIT = env_int("GRAFT_TRAINING_TIME_LIMIT", 6 * 3600, minimum=60)
GRAFT_HEARTBEAT_TIMEOUT = env_int("GRAFT_HEARTBEAT_TIMEOUT", 120, minimum=5)
GRAFT_JOB_MAX_ATTEMPTS = env_int("GRAFT_JOB_MAX_ATTEMPTS", 3, minimum=1)
GRAFT_RECONCILE_INTERVAL = env_int("GRAFT_RECONCILE_INTERVAL", 60, minimum=1)

CELERY_TASK_SERIALIZER = "json"
CELERY_RESULT_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_RESULT_EXPIRES = 3600
CELERY_TASK_DEFAULT_QUEUE = "default"
CELERY_TASK_ROUTES = {
    "worker.tasks.train_job": {"queue": "training"},
    "worker.tasks.classify_batch": {"queue": "default"},
    "worker.tasks.prune_predictions": {"queue": "default"},
    "worker.tasks.remove_stale_exports": {"queue": "default"},
    "worker.tasks.quantize_version": {"queue": "default"},
}
CELERY_BEAT_SCHEDULE = {
    "prune-predictions": {"task": "worker.tasks.prune_predictions", "schedule": 3600.0},
    "remove-stale-exports": {"task": "worker.tasks.remove_stale_exports", "schedule": 3600.0},
    "reconcile-jobs-and-batches": {
        "task": "worker.tasks.reconcile_jobs",
        "schedule": GRAFT_RECONCILE_INTERVAL,
        "options": {"queue": "default", "expires": GRAFT_RECONCILE_INTERVAL},
    },
}
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
# One task per child process: TensorFlow's memory is returned to the OS after every job.
CELERY_WORKER_MAX_TASKS_PER_CHILD = 1
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_TASK_SOFT_TIME_LIMIT = GRAFT_TRAINING_TIME_LIMIT
CELERY_TASK_TIME_LIMIT = GRAFT_TRAINING_TIME_LIMIT + 300
CELERY_BROKER_TRANSPORT_OPTIONS = {"visibility_timeout": GRAFT_TRAINING_TIME_LIMIT + 3600}
CELERY_RESULT_BACKEND_TRANSPORT_OPTIONS = CELERY_BROKER_TRANSPORT_OPTIONS
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_WORKER_HIJACK_ROOT_LOGGER = False
CELERY_TASK_SEND_SENT_EVENT = True

# --- Login attempts (django-axes) --------------------------------------------------

# After this many failed logins for one username from one address, that pair is refused
# for the cool-off, counted from its latest attempt; a successful login resets the count.
# API tokens never go through authenticate(), so they are not counted or refused.
GRAFT_LOGIN_FAILURE_LIMIT = env_int("GRAFT_LOGIN_FAILURE_LIMIT", 5, minimum=1)
GRAFT_LOGIN_COOLOFF_MINUTES = env_int("GRAFT_LOGIN_COOLOFF_MINUTES", 15, minimum=1)
AXES_FAILURE_LIMIT = GRAFT_LOGIN_FAILURE_LIMIT
AXES_COOLOFF_TIME = timedelta(minutes=GRAFT_LOGIN_COOLOFF_MINUTES)
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
AXES_RESET_ON_SUCCESS = True
AXES_LOCKOUT_CALLABLE = "webapp.views.accounts.login_locked_out"
AXES_VERBOSE = False  # no "AXES: BEGIN ..." banner in every process's log
# Without django-ipware installed, axes takes the address from the connection
# (REMOTE_ADDR), never from a header a client could forge; behind a proxy that is the
# proxy's address for everyone (see README, Production serving).

# --- API -----------------------------------------------------------------------------


def _rate(name: str, default: str) -> str | None:
    """A DRF throttle rate such as ``600/minute``; ``off`` disables the limit."""
    raw = env_str(name, default).strip().lower()
    if raw in ("off", "none", "0", ""):
        return None
    count, _, period = raw.partition("/")
    if not count.isdigit() or period[:1] not in ("s", "m", "h", "d"):
        raise ImproperlyConfigured(f"{name} must look like 600/minute (or off), got {raw!r}")
    return raw


# Requests per API token (per user for session logins). Counters live in CACHES: per
# process by default; set GRAFT_CACHE_URL (e.g. redis://host:6379/1) to share them.
GRAFT_API_RATE = _rate("GRAFT_API_RATE", "1200/minute")
GRAFT_CACHE_URL = env_str("GRAFT_CACHE_URL", "")
if GRAFT_CACHE_URL and not GRAFT_CACHE_URL.startswith(("redis://", "rediss://", "unix://")):
    raise ImproperlyConfigured(f"GRAFT_CACHE_URL must be a redis:// URL, got {GRAFT_CACHE_URL!r}")
CACHES = {
    "default": (
        {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": GRAFT_CACHE_URL}
        if GRAFT_CACHE_URL
        else {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}
    )
}

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "webapp.api.throttling.TokenAuthentication",  # DRF's, with wrong tokens limited
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_PARSER_CLASSES": [
        "rest_framework.parsers.JSONParser",
        "rest_framework.parsers.MultiPartParser",
    ],
    "DEFAULT_THROTTLE_CLASSES": ["webapp.api.throttling.TokenRateThrottle"],
    "DEFAULT_THROTTLE_RATES": {"token": GRAFT_API_RATE},
    "DEFAULT_PAGINATION_CLASS": "webapp.api.pagination.LimitOffsetPagination",
    "PAGE_SIZE": 50,
    "EXCEPTION_HANDLER": "webapp.api.errors.exception_handler",
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
}
SPECTACULAR_SETTINGS = {
    "TITLE": "Graft API",
    "DESCRIPTION": "Train, version and serve transfer-learning image classifiers.",
    "VERSION": "1",
    "SERVE_INCLUDE_SCHEMA": False,
    # Request bodies get their own components, so uploads are documented as files (binary).
    "COMPONENT_SPLIT_REQUEST": True,
    # Training jobs and batches share one set of statuses (queued ... cancelled).
    "ENUM_NAME_OVERRIDES": {"RunStatusEnum": "webapp.models.BatchClassification.Status"},
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
}

# --- Logging -------------------------------------------------------------------------

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": env_log_level("LOG_LEVEL", "INFO")},
}
