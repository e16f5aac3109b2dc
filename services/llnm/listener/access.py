"""Who may connect, and the per-calling-AE settings.

`LLNM_ALLOWED_AES` is a comma-separated list of entries `AE[@HOST][;key=value...]`:
- `US1` allows calling AE title US1 from any address;
- `US1@10.0.0.5` allows it only from that address (repeat the entry for more addresses);
- `US1@10.0.0.5;series_idle_s=5;study_idle_s=20` also sets that AE's completion timers.
Empty: any calling AE from anywhere, with the global timers. Unknown keys are a configuration error.
"""

from __future__ import annotations

import ipaddress
import threading
from dataclasses import dataclass, field

_KEYS = {"series_idle_s", "study_idle_s"}
#: With an open allow-list, the first this many calling AE titles seen become metric labels; every later
#: one is "other". A scanner cycling AE titles cannot grow the metrics without bound.
MAX_OPEN_LABELS = 20
OTHER = "other"


@dataclass
class CallingAE:
    title: str
    hosts: set[str] = field(default_factory=set)  # empty: any address
    series_idle_s: float | None = None
    study_idle_s: float | None = None


@dataclass
class AccessPolicy:
    entries: dict[str, CallingAE]
    series_idle_s: float
    study_idle_s: float
    max_open_labels: int = MAX_OPEN_LABELS
    _seen: set[str] = field(default_factory=set, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def open(self) -> bool:
        return not self.entries

    def allows(self, calling_ae: str, address: str) -> bool:
        if self.open:
            return True
        entry = self.entries.get(calling_ae.strip())
        if entry is None:
            return False
        return not entry.hosts or _normal(address) in entry.hosts

    def timers(self, calling_ae: str) -> tuple[float, float]:
        """(series idle, study idle) seconds for studies from `calling_ae`."""
        entry = self.entries.get(calling_ae.strip())
        series = entry.series_idle_s if entry and entry.series_idle_s is not None else self.series_idle_s
        study = entry.study_idle_s if entry and entry.study_idle_s is not None else self.study_idle_s
        return series, study

    def metric_label(self, calling_ae: str) -> str:
        """The calling AE title as a metric label: those on the allow-list, others "other". With an open
        allow-list, the first `max_open_labels` titles seen, then "other" (a bounded label set)."""
        title = calling_ae.strip()
        if not self.open:
            return title if title in self.entries else OTHER
        with self._lock:
            if title in self._seen:
                return title
            if len(self._seen) < self.max_open_labels and title != OTHER:
                self._seen.add(title)
                return title
        return OTHER


def _normal(address: str) -> str:
    try:
        ip = ipaddress.ip_address(address.split("%")[0])
        if ip.version == 6 and ip.ipv4_mapped:
            ip = ip.ipv4_mapped
        return str(ip)
    except ValueError:
        return address.strip().lower()


def parse_access(text: str, series_idle_s: float, study_idle_s: float) -> AccessPolicy:
    entries: dict[str, CallingAE] = {}
    for raw in (text or "").split(","):
        raw = raw.strip()
        if not raw:
            continue
        head, *options = [p.strip() for p in raw.split(";")]
        title, _, host = head.partition("@")
        title = title.strip()
        if not title or len(title) > 16:
            raise ValueError(f"LLNM_ALLOWED_AES: bad AE title in {raw!r} (1 to 16 characters)")
        entry = entries.setdefault(title, CallingAE(title))
        if host.strip():
            entry.hosts.add(_normal(host.strip()))
        for option in options:
            key, _, value = option.partition("=")
            key = key.strip()
            if key not in _KEYS:
                raise ValueError(f"LLNM_ALLOWED_AES: unknown option {key!r} in {raw!r}; known: {sorted(_KEYS)}")
            try:
                setattr(entry, key, float(value))
            except ValueError as exc:
                raise ValueError(f"LLNM_ALLOWED_AES: {key} must be a number in {raw!r}") from exc
    return AccessPolicy(entries, series_idle_s, study_idle_s)
