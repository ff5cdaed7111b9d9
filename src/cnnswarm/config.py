"""One typed settings object, read from the environment in one place.

The seed's variable names are accepted as they are (``FLASK_CONTROLLER_PORT``, ``HOME_DIR``, ...);
every other setting has a default named once in ``DEFAULTS``. A bad value fails at start-up with a
message that names the variable and what it expects.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

logger = logging.getLogger(__name__)


def _default_cpu_coordination_dir() -> str:
    """Where this host's training jobs register (``cnnswarm.cpu.HostJobs``): a per-user folder
    in memory (``/dev/shm``, else ``$XDG_RUNTIME_DIR``, else the temp folder)."""
    user = f"cnn-swarm-cpu-{os.getuid()}"
    if Path("/dev/shm").is_dir():
        return f"/dev/shm/{user}"
    runtime_dir = os.environ.get("XDG_RUNTIME_DIR")
    return f"{runtime_dir}/cnn-swarm-cpu" if runtime_dir else f"{tempfile.gettempdir()}/{user}"


# The controller's gunicorn worker classes (GUNICORN_WORKER_CLASS).
WORKER_CLASSES = ("gthread", "gevent")

# Every default, named once.
DEFAULTS: dict[str, str] = {
    "FLASK_CONTROLLER_HOST": "127.0.0.1",
    "FLASK_CONTROLLER_PORT": "48515",
    "FLASK_TRAIN_HOST": "127.0.0.1",
    "FLASK_TRAIN_PORT": "48516",
    "HOME_DIR": str(Path.home() / ".cnn-swarm"),
    "CONTROLLER_URL": "",
    "DATABASE_URL": "",
    "TRAINER_SLOTS": "1",
    "TRAINER_URL": "",
    "TRAINER_ID": "",
    "HEARTBEAT_INTERVAL_S": "1.0",
    "LEASE_TIMEOUT_S": "10.0",
    "MAX_ATTEMPTS": "3",
    "SCHEDULER_INTERVAL_S": "0.5",
    # A data-parallel attempt fails when its gang has not met within the first, or when a
    # collective (a peer gone or partitioned) blocks longer than the second.
    "GANG_INIT_TIMEOUT_S": "60",
    "GANG_COLLECTIVE_TIMEOUT_S": "120",
    "CNN_SWARM_API_TOKEN": "",
    "CNN_SWARM_API_TOKEN_FILE": "",
    # Where the CLI's client commands go; empty means http://127.0.0.1:<FLASK_CONTROLLER_PORT>.
    "CNN_SWARM_URL": "",
    # Serve beyond loopback without a token (a trusted network only).
    "CNN_SWARM_ALLOW_NO_TOKEN": "0",
    "MAX_UPLOAD_MB": "512",
    "PREDICT_CACHE_MODELS": "8",
    "PREDICT_MAX_BATCH": "64",
    # A predict request that would wait longer than this in its model's queue gets 503.
    "PREDICT_MAX_QUEUE_S": "2.0",
    # Torch threads of each controller worker (inference, exports, imports).
    "PREDICT_TORCH_THREADS": "1",
    "TORCH_THREADS": "",
    # The training jobs of one host split its CPUs through this folder; trainers in separate
    # containers on one host must all see it (a shared tmpfs volume).
    "CPU_COORDINATION_DIR": _default_cpu_coordination_dir(),
    "ALLOW_DOWNLOADS": "0",
    "FORCE_CPU": "0",
    # Controller processes (a trainer always runs one) and request threads in each (gthread).
    "GUNICORN_WORKERS": "2",
    "GUNICORN_THREADS": "16",
    # The controller's gunicorn worker class: gevent (one event loop per worker; forward passes
    # and other CPU-heavy steps run in its thread pool), or gthread (request threads). A trainer
    # always runs gthread.
    "GUNICORN_WORKER_CLASS": "gevent",
    "SUBNET_TRAIN": "",
    # GET /metrics (Prometheus) and the series behind it, on both roles.
    "METRICS_ENABLED": "1",
}


class ConfigError(ValueError):
    """A setting is missing or malformed; the message names the variable."""


@dataclass(frozen=True)
class Settings:
    """Everything a controller or trainer process needs to know about its environment."""

    controller_host: str = DEFAULTS["FLASK_CONTROLLER_HOST"]
    controller_port: int = int(DEFAULTS["FLASK_CONTROLLER_PORT"])
    train_host: str = DEFAULTS["FLASK_TRAIN_HOST"]
    train_port: int = int(DEFAULTS["FLASK_TRAIN_PORT"])
    home_dir: Path = field(default_factory=lambda: Path(DEFAULTS["HOME_DIR"]))
    # Where trainers reach the controller; empty means http://127.0.0.1:<controller_port>.
    controller_url: str = ""
    # SQLAlchemy URL; empty means an SQLite file under home_dir.
    database_url: str = ""
    trainer_slots: int = 1
    # The address this trainer announces to the controller; empty means derived from host/port.
    trainer_url: str = ""
    trainer_id: str = ""
    heartbeat_interval_s: float = 1.0
    lease_timeout_s: float = 10.0
    max_attempts: int = 3
    scheduler_interval_s: float = 0.5
    gang_init_timeout_s: float = float(DEFAULTS["GANG_INIT_TIMEOUT_S"])
    gang_collective_timeout_s: float = float(DEFAULTS["GANG_COLLECTIVE_TIMEOUT_S"])
    # Out of repr: settings get printed and logged; the token must never be.
    api_token: str = field(default="", repr=False)
    # Lets a role listen beyond loopback without ``api_token`` (see ``check_token_policy``).
    allow_no_token: bool = False
    max_upload_bytes: int = 512 * 1024 * 1024
    predict_cache_models: int = 8
    predict_max_batch: int = 64
    predict_max_queue_s: float = 2.0
    predict_torch_threads: int = 1
    # Threads for torch in a trainer; 0 means "derive from the CPU share" (for a training
    # job: this host's share divided among the jobs registered in cpu_coordination_dir).
    torch_threads: int = 0
    cpu_coordination_dir: Path = field(
        default_factory=lambda: Path(DEFAULTS["CPU_COORDINATION_DIR"])
    )
    allow_downloads: bool = False
    force_cpu: bool = False
    gunicorn_workers: int = 2
    gunicorn_threads: int = 16
    gunicorn_worker_class: str = DEFAULTS["GUNICORN_WORKER_CLASS"]
    # Names one controller instance (its gunicorn master), shared by its workers so /readyz and
    # /status say whether this instance leads; empty: each process is its own instance.
    # Set by ``serve_controller``, never from the environment.
    controller_instance: str = ""
    # Accepted for seed compatibility and ignored: nothing scans address ranges.
    subnet_train: str = ""
    metrics_enabled: bool = True

    @property
    def resolved_controller_url(self) -> str:
        """The controller's base URL without a trailing slash."""
        if self.controller_url:
            return self.controller_url.rstrip("/")
        host = self.controller_host if self.controller_host not in ("0.0.0.0", "") else "127.0.0.1"
        return f"http://{host}:{self.controller_port}"

    @property
    def resolved_database_url(self) -> str:
        """The job store's SQLAlchemy URL (an SQLite file under ``home_dir`` by default)."""
        if self.database_url:
            return self.database_url
        return f"sqlite:///{self.home_dir / 'cnn-swarm.sqlite3'}"

    def with_overrides(self, **changes: object) -> Settings:
        """A copy with some fields replaced (tests and the CLI use this)."""
        return replace(self, **changes)  # type: ignore[arg-type]


def _get(env: Mapping[str, str], name: str) -> str:
    value = env.get(name)
    if value is None or value == "":
        return DEFAULTS[name]
    return value


def _int(env: Mapping[str, str], name: str, minimum: int = 0) -> int:
    raw = _get(env, name)
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"Config '{name}' must be an integer, got {raw!r}.") from None
    if value < minimum:
        raise ConfigError(f"Config '{name}' must be >= {minimum}, got {value}.")
    return value


def _float(env: Mapping[str, str], name: str, minimum: float = 0.0) -> float:
    raw = _get(env, name)
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"Config '{name}' must be a number, got {raw!r}.") from None
    if value <= minimum:
        raise ConfigError(f"Config '{name}' must be > {minimum}, got {value}.")
    return value


def _choice(env: Mapping[str, str], name: str, choices: Sequence[str]) -> str:
    value = _get(env, name).strip().lower()
    if value not in choices:
        raise ConfigError(f"Config '{name}' must be one of {', '.join(choices)}, got {value!r}.")
    return value


def _bool(env: Mapping[str, str], name: str) -> bool:
    raw = _get(env, name).strip().lower()
    if raw in ("1", "true", "yes", "on"):
        return True
    if raw in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"Config '{name}' must be a boolean (1/0, true/false), got {raw!r}.")


def _port(env: Mapping[str, str], name: str) -> int:
    value = _int(env, name)
    if value > 65535:
        raise ConfigError(f"Config '{name}' must be a TCP port (0-65535), got {value}.")
    return value


def _token(env: Mapping[str, str]) -> str:
    token = env.get("CNN_SWARM_API_TOKEN", "")
    path = env.get("CNN_SWARM_API_TOKEN_FILE", "")
    if token:
        return token
    if path:
        try:
            return Path(path).read_text().strip()
        except OSError as exc:
            raise ConfigError(
                f"Config 'CNN_SWARM_API_TOKEN_FILE' points to {path!r}, which cannot be read: "
                f"{exc}."
            ) from None
    return ""


# Settings that no longer do anything, and what replaced them.
RETIRED = {
    "PREDICT_MAX_INFLIGHT": "predict load is shed by queue time: PREDICT_MAX_QUEUE_S",
}


def _warn_about_retired(env: Mapping[str, str]) -> None:
    for name, replacement in RETIRED.items():
        if env.get(name):
            logger.warning("Config '%s' is ignored; %s.", name, replacement)


def load_settings(env: Mapping[str, str] | None = None) -> Settings:
    """Read settings from ``env`` (default: ``os.environ``); raise ``ConfigError`` naming the
    variable on a bad value."""
    env = os.environ if env is None else env
    _warn_about_retired(env)
    database_url = env.get("DATABASE_URL", "")
    database_file = env.get("DATABASE_URL_FILE", "")
    if not database_url and database_file:
        try:
            database_url = Path(database_file).read_text().strip()
        except OSError as exc:
            raise ConfigError(
                f"Config 'DATABASE_URL_FILE' points to {database_file!r}, which cannot be read: "
                f"{exc}."
            ) from None
    return Settings(
        controller_host=_get(env, "FLASK_CONTROLLER_HOST"),
        controller_port=_port(env, "FLASK_CONTROLLER_PORT"),
        train_host=_get(env, "FLASK_TRAIN_HOST"),
        train_port=_port(env, "FLASK_TRAIN_PORT"),
        home_dir=Path(_get(env, "HOME_DIR")).expanduser(),
        controller_url=_get(env, "CONTROLLER_URL"),
        database_url=database_url,
        trainer_slots=_int(env, "TRAINER_SLOTS", minimum=1),
        trainer_url=_get(env, "TRAINER_URL"),
        trainer_id=_get(env, "TRAINER_ID"),
        heartbeat_interval_s=_float(env, "HEARTBEAT_INTERVAL_S"),
        lease_timeout_s=_float(env, "LEASE_TIMEOUT_S"),
        max_attempts=_int(env, "MAX_ATTEMPTS", minimum=1),
        scheduler_interval_s=_float(env, "SCHEDULER_INTERVAL_S"),
        gang_init_timeout_s=_float(env, "GANG_INIT_TIMEOUT_S"),
        gang_collective_timeout_s=_float(env, "GANG_COLLECTIVE_TIMEOUT_S"),
        api_token=_token(env),
        allow_no_token=_bool(env, "CNN_SWARM_ALLOW_NO_TOKEN"),
        max_upload_bytes=_int(env, "MAX_UPLOAD_MB", minimum=1) * 1024 * 1024,
        predict_cache_models=_int(env, "PREDICT_CACHE_MODELS", minimum=1),
        predict_max_batch=_int(env, "PREDICT_MAX_BATCH", minimum=1),
        predict_max_queue_s=_float(env, "PREDICT_MAX_QUEUE_S"),
        predict_torch_threads=_int(env, "PREDICT_TORCH_THREADS", minimum=1),
        torch_threads=_int(env, "TORCH_THREADS") if _get(env, "TORCH_THREADS") else 0,
        cpu_coordination_dir=Path(_get(env, "CPU_COORDINATION_DIR")).expanduser(),
        allow_downloads=_bool(env, "ALLOW_DOWNLOADS"),
        force_cpu=_bool(env, "FORCE_CPU"),
        gunicorn_workers=_int(env, "GUNICORN_WORKERS", minimum=1),
        gunicorn_threads=_int(env, "GUNICORN_THREADS", minimum=1),
        gunicorn_worker_class=_choice(env, "GUNICORN_WORKER_CLASS", WORKER_CLASSES),
        subnet_train=_get(env, "SUBNET_TRAIN"),
        metrics_enabled=_bool(env, "METRICS_ENABLED"),
    )


@dataclass(frozen=True)
class ClientSettings:
    """Where the CLI's client commands reach the controller, and the token they send."""

    url: str
    # Out of repr, as in ``Settings``.
    api_token: str = field(default="", repr=False)


def load_client_settings(env: Mapping[str, str] | None = None) -> ClientSettings:
    """Read the CLI's settings from ``env`` (default: ``os.environ``): ``CNN_SWARM_URL`` (default:
    the local controller on ``FLASK_CONTROLLER_PORT``) and the token as the servers read it
    (``CNN_SWARM_API_TOKEN``, else the file named by ``CNN_SWARM_API_TOKEN_FILE``)."""
    env = os.environ if env is None else env
    _warn_about_retired(env)
    url = _get(env, "CNN_SWARM_URL") or f"http://127.0.0.1:{_port(env, 'FLASK_CONTROLLER_PORT')}"
    return ClientSettings(url=url.rstrip("/"), api_token=_token(env))


def is_loopback_host(host: str) -> bool:
    """Whether binding ``host`` listens on loopback only: ``localhost``, 127.0.0.0/8 or ``::1``
    (brackets allowed). An empty host, a wildcard or any other name or address is not."""
    name = host.strip().strip("[]").lower()
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def check_token_policy(settings: Settings, host: str) -> None:
    """Raise ``ConfigError`` when a role would listen on ``host`` beyond loopback with no API
    token, unless ``settings.allow_no_token`` opts out; return quietly otherwise."""
    if settings.api_token or settings.allow_no_token or is_loopback_host(host):
        return
    raise ConfigError(
        f"listening on {host or '<all interfaces>'} (beyond loopback) needs an API token: set "
        "CNN_SWARM_API_TOKEN or CNN_SWARM_API_TOKEN_FILE (or CNN_SWARM_ALLOW_NO_TOKEN=1 on a "
        "trusted network)"
    )
