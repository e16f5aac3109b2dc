"""Who may use the console, and what each role may do.

Users live in one file (`LLNM_CONSOLE_USERS_FILE`, default `<data_dir>/console-users`), one per line:
`name role argon2-hash` (`llnm console add-user NAME --role ROLE` writes it; argon2id through argon2-cffi).
The file is re-read when it changes, and a session whose user was removed or changed role ends at its
next request. Sessions are Starlette's signed cookies (itsdangerous) with SameSite=Strict; every state
change needs the session's CSRF token (a form field, or the X-CSRF-Token header of the JSON API).

Users of an OpenID Connect provider (llnm.console.oidc) get their role from its group claim instead.

Failed logins are throttled (`LoginThrottle`): after 5 failures for one user name, or 20 from one client
address, within 10 minutes, further tries are refused for 5 minutes without checking the password (each
check costs an argon2 verification, and a password must not be guessable at network speed).

Roles: viewer (read), operator (read, act), radiologist (read, feedback), admin (all). Patient name, ID,
birth date and the key images (pixels as acquired, burned-in text included) are shown only to the roles
in `LLNM_CONSOLE_PHI_ROLES`.
"""

from __future__ import annotations

import fcntl
import os
import re
import secrets
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from llnm.observability.logs import get_logger
from llnm.storage.durable import write_durably

log = get_logger(__name__)

READ, ACT, FEEDBACK = "read", "act", "feedback"
ROLES: dict[str, frozenset[str]] = {
    "viewer": frozenset({READ}),
    "operator": frozenset({READ, ACT}),
    "radiologist": frozenset({READ, FEEDBACK}),
    "admin": frozenset({READ, ACT, FEEDBACK}),
}
_NAME = re.compile(r"^[A-Za-z0-9._@-]{1,64}$")
_HASHER = PasswordHasher()
#: verified against when the user does not exist, so a wrong name costs as long as a wrong password
_DUMMY_HASH = _HASHER.hash(secrets.token_hex(16))


class UsersFileError(ValueError):
    """A line of the users file is not `name role hash` with a known role."""


@dataclass(frozen=True)
class User:
    name: str
    role: str

    def can(self, permission: str) -> bool:
        return permission in ROLES.get(self.role, frozenset())


def valid_name(name: str) -> bool:
    return bool(_NAME.match(name or ""))


def hash_password(password: str) -> str:
    return _HASHER.hash(password)


def user_line(name: str, role: str, password: str) -> str:
    """One line of the users file."""
    if not valid_name(name):
        raise UsersFileError("a user name is 1-64 letters, digits or ._@-")
    if role not in ROLES:
        raise UsersFileError(f"role must be one of {', '.join(ROLES)}")
    return f"{name} {role} {hash_password(password)}"


def parse_users(text: str) -> dict[str, tuple[str, str]]:
    """{name: (role, hash)}; blank lines and '#' comments skipped."""
    users: dict[str, tuple[str, str]] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split()
        if len(parts) != 3 or not valid_name(parts[0]) or parts[1] not in ROLES:
            raise UsersFileError(f"users file line {number}: expected 'name role hash' with a known role")
        users[parts[0]] = (parts[1], parts[2])
    return users


class Users:
    """The users file, re-read when its modification time or size changes."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._stamp: tuple[float, int] | None = None
        self._users: dict[str, tuple[str, str]] = {}

    def _current(self) -> dict[str, tuple[str, str]]:
        try:
            st = self.path.stat()
        except FileNotFoundError:
            return {}
        with self._lock:
            stamp = (st.st_mtime, st.st_size)
            if stamp != self._stamp:
                try:
                    self._users = parse_users(self.path.read_text(encoding="utf-8"))
                except UsersFileError as exc:  # nobody logs in until it is fixed (never a guess)
                    log.error("console users file refused: no login until it is corrected", reason=str(exc),
                              path=str(self.path))
                    self._users = {}
                self._stamp = stamp
            return self._users

    def count(self) -> int:
        return len(self._current())

    def lookup(self, name: str) -> User | None:
        entry = self._current().get(name)
        return User(name, entry[0]) if entry else None

    def authenticate(self, name: str, password: str) -> User | None:
        entry = self._current().get(name) if valid_name(name) else None
        try:
            _HASHER.verify(entry[1] if entry else _DUMMY_HASH, password)
        except (VerificationError, InvalidHashError):
            return None
        return User(name, entry[0]) if entry else None

    def add(self, name: str, role: str, password: str) -> None:
        """Add or replace a user (the file is created 0600)."""
        line = user_line(name, role, password)
        existing = self.path.read_text(encoding="utf-8").splitlines() if self.path.is_file() else []
        kept = [l for l in existing if not l.strip() or l.lstrip().startswith("#") or l.split()[0] != name]
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write("\n".join(kept + [line]) + "\n")
        os.replace(tmp, self.path)


#: the shortest session-signing key accepted: a shorter one (an empty file, a typed-in word) is guessable
MIN_SECRET_KEY_CHARS = 32


class SecretKeyError(ValueError):
    """LLNM_CONSOLE_SECRET_KEY is too short to sign sessions with."""


def secret_key(configured: str, data_dir: Path) -> str:
    """The session-signing key: the configured one, else a random one kept (0600) in the data dir, so that
    sessions survive a restart and every process on the volume agrees.

    Anyone who knows the key can forge any session, so a key shorter than MIN_SECRET_KEY_CHARS is never
    used: a configured one is refused (SecretKeyError, at start-up); a key file left empty or cut short
    (a full disk, a kill mid-write) is replaced by a new random key. The file is written whole (temp
    file, fsync, rename) under a lock, so every process reads the same complete key."""
    if configured:
        if len(configured.strip()) < MIN_SECRET_KEY_CHARS:
            raise SecretKeyError(f"LLNM_CONSOLE_SECRET_KEY has fewer than {MIN_SECRET_KEY_CHARS} characters: "
                                 "anyone could forge a session. Set a random one (python -c 'import secrets; "
                                 "print(secrets.token_urlsafe(48))') or leave it empty for a kept random key")
        return configured
    path = Path(data_dir) / "console-secret"
    key = _kept_key(path)
    if key is not None:
        return key
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name("console-secret.lock"), "a") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)  # released when closed
        key = _kept_key(path)  # another process may have written it meanwhile: use theirs
        if key is None:
            if path.exists():
                log.warning("console secret key file empty or too short: replaced by a new random key "
                            "(existing sessions end)", path=str(path))
            key = secrets.token_urlsafe(48)
            write_durably(path, key.encode())
    return key


def _kept_key(path: Path) -> str | None:
    """The key in the data dir's key file; None when there is none or it is too short to use."""
    try:
        key = path.read_text().strip()
    except FileNotFoundError:
        return None
    return key if len(key) >= MIN_SECRET_KEY_CHARS else None


def new_csrf_token() -> str:
    return secrets.token_urlsafe(32)


def same_token(expected: str | None, given: str | None) -> bool:
    return bool(expected) and bool(given) and secrets.compare_digest(str(expected), str(given))


class LoginThrottle:
    """Failed logins per user name and per client address in a sliding window; over the limit, the key is
    locked for `lock_s` (in memory: a restart forgets, which costs an attacker a restart per 5 tries)."""

    def __init__(self, per_user: int = 5, per_client: int = 20, window_s: float = 600.0, lock_s: float = 300.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.limits = {"user": per_user, "client": per_client}
        self.window_s, self.lock_s, self.clock = window_s, lock_s, clock
        self._failures: dict[tuple[str, str], deque[float]] = {}
        self._locked_until: dict[tuple[str, str], float] = {}
        self._lock = threading.Lock()

    def _keys(self, name: str, client: str) -> list[tuple[str, str]]:
        return [("user", name.lower()), ("client", client)]

    def retry_after(self, name: str, client: str) -> float:
        """Seconds until a login for `name` from `client` may be tried again (0: now)."""
        now = self.clock()
        with self._lock:
            return max([self._locked_until.get(k, 0.0) - now for k in self._keys(name, client)] + [0.0])

    def failed(self, name: str, client: str) -> None:
        now = self.clock()
        with self._lock:
            for key in self._keys(name, client):
                times = self._failures.setdefault(key, deque())
                times.append(now)
                while times and now - times[0] > self.window_s:
                    times.popleft()
                if len(times) >= self.limits[key[0]]:
                    self._locked_until[key] = now + self.lock_s
                    times.clear()
                    log.warning("console logins locked after repeated failures", kind=key[0],
                                seconds=int(self.lock_s))

    def succeeded(self, name: str) -> None:
        with self._lock:
            self._failures.pop(("user", name.lower()), None)
