"""Console latency at 100,000 studies (issue 19): the study list (first page, a deep page through the keyset
cursor, filtered by state and by calling AE) and one study's page, each the median of --runs requests
through the whole Starlette app (session, query, Jinja2 rendering), in process.

Baselines in the same run: the same requests on a database of --small studies, and the deep page read with
OFFSET instead of the keyset cursor (what a naive list does). Each study has --events audit events.

    .venv/bin/python bench/console.py --studies 100000 --small 1000 --events 6 --runs 30
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import tempfile
import time
from pathlib import Path

from argon2 import PasswordHasher

from llnm import audit as A
from llnm.audit import AuditTrail
from llnm.config import Settings

PASSWORD = "bench password"
EVENTS = ("receiving", "series complete", "study complete", "queued", "processing", "result", "sent", "delivered")


def fill(audit: AuditTrail, studies: int, events: int, seed: int = 0) -> list[str]:
    """`studies` rows spread over 30 days and 8 calling AEs, most done, with `events` events each."""
    rng = random.Random(seed)
    now = time.time()
    uids = []
    states = [A.DONE] * 85 + [A.FAILED] * 5 + [A.IGNORED] * 6 + [A.RECEIVING, A.QUEUED, A.PROCESSING, A.SENDING]
    with audit.transaction() as c:
        for i in range(studies):
            uid = f"1.2.826.0.1.3680043.10.549.{i}"
            t = now - rng.uniform(0, 30 * 86400)
            state = rng.choice(states)
            c.execute("INSERT INTO studies(study_uid, state, calling_ae, instances, probability, risk_level, error,"
                      " created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                      (uid, state, f"AE{i % 8}", 3, rng.random() if state == A.DONE else None,
                       rng.randint(1, 3) if state == A.DONE else None,
                       "PermanentError: x" if state == A.FAILED else None, t - 60, t))
            for k in range(events):
                c.execute("INSERT INTO events(study_uid, ts, event, detail) VALUES (?, ?, ?, ?)",
                          (uid, t - 60 + k, EVENTS[k % len(EVENTS)], json.dumps({"calling_ae": f"AE{i % 8}"})))
            uids.append(uid)
    return uids


def client_for(settings: Settings, audit: AuditTrail):
    import re

    from starlette.testclient import TestClient

    from llnm.console.app import create_app

    settings.console_users_path.write_text(
        f"bench viewer {PasswordHasher(time_cost=1, memory_cost=8192, parallelism=1).hash(PASSWORD)}\n")
    client = TestClient(create_app(settings, audit))
    page = client.get("/login").text
    csrf = re.search(r'name="csrf" value="([^"]+)"', page).group(1)
    assert client.post("/login", data={"username": "bench", "password": PASSWORD, "csrf": csrf}).status_code == 200
    return client


def median_ms(fn, runs: int) -> float:
    fn()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000)
    return round(statistics.median(times), 2)


def measure(studies: int, events: int, runs: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="llnm-bench-console-") as tmp:
        settings = Settings(data_dir=Path(tmp), console_port=0, metrics_port=0)
        audit = AuditTrail.for_data_dir(settings.data_dir)
        start = time.perf_counter()
        uids = fill(audit, studies, events)
        fill_s = time.perf_counter() - start
        client = client_for(settings, audit)
        half = audit.read("SELECT updated_at, study_uid FROM studies ORDER BY updated_at DESC, study_uid DESC"
                          " LIMIT 1 OFFSET ?", (studies // 2,))[0]
        cursor = f"{half['updated_at']!r}_{half['study_uid']}"
        uid = uids[len(uids) // 3]

        def ok(path: str, **params):
            return lambda: client.get(path, params=params).raise_for_status()

        out = {
            "studies": studies, "events": studies * events, "fill_s": round(fill_s, 1),
            "list_first_page_ms": median_ms(ok("/studies"), runs),
            "list_deep_page_keyset_ms": median_ms(ok("/studies", after=cursor), runs),
            "list_deep_page_offset_sql_ms": median_ms(lambda: audit.read(
                "SELECT * FROM studies ORDER BY updated_at DESC, study_uid DESC LIMIT 50 OFFSET ?",
                (studies // 2,)), runs),
            "list_deep_page_keyset_sql_ms": median_ms(lambda: audit.page(after=(half["updated_at"], half["study_uid"])),
                                                      runs),
            "list_state_failed_ms": median_ms(ok("/studies", state="failed"), runs),
            "list_calling_ae_ms": median_ms(ok("/studies", ae="AE3"), runs),
            "study_page_ms": median_ms(ok(f"/studies/{uid}"), runs),
            "health_page_ms": median_ms(ok("/health"), runs),
        }
        audit.close()
        return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--studies", type=int, default=100_000)
    parser.add_argument("--small", type=int, default=1_000, help="the baseline database's studies")
    parser.add_argument("--events", type=int, default=6, help="audit events per study")
    parser.add_argument("--runs", type=int, default=30)
    args = parser.parse_args()
    load_before = os.getloadavg()
    small = measure(args.small, args.events, args.runs)
    large = measure(args.studies, args.events, args.runs)
    ratios = {k: round(large[k] / small[k], 2) for k in large if k.endswith("_ms") and small[k]}
    print(json.dumps({"baseline": small, "large": large, "large_over_baseline": ratios,
                      "loadavg_before": load_before, "loadavg_after": os.getloadavg()}, indent=1))


if __name__ == "__main__":
    main()
