"""The loop the console closes: 20 phantom studies sent to a real `llnm serve`, their pathology outcomes
recorded through the console's JSON API, the cohort exported with `llnm cohort export`, a tiny TMDL trained
on it with `llnm train` and evaluated with `llnm evaluate`."""

from __future__ import annotations

import csv
import http.cookiejar
import json
import os
import subprocess
import urllib.request
from pathlib import Path

import pytest
from console_support import PASSWORD, write_users
from support import VENV_BIN, Service, free_port, wait_for

from llnm import audit as A
from llnm.audit import AuditTrail
from llnm.model.data import read_layout

pytestmark = pytest.mark.slow

STUDIES = 20


def _llnm(*args: str, env: dict[str, str], timeout_s: int = 900) -> subprocess.CompletedProcess:
    return subprocess.run([str(VENV_BIN / "llnm"), *args], capture_output=True, text=True, env=env,
                          timeout=timeout_s)


class Api:
    """The console's JSON API as a script uses it: log in, then POST with the session's CSRF token."""

    def __init__(self, url: str, user: str) -> None:
        self.url = url
        self.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()))
        self.csrf = self.post("/api/login", {"username": user, "password": PASSWORD}, csrf=False)["csrf"]

    def post(self, path: str, body: dict, csrf: bool = True) -> dict:
        headers = {"Content-Type": "application/json", **({"X-CSRF-Token": self.csrf} if csrf else {})}
        request = urllib.request.Request(f"{self.url}{path}", data=json.dumps(body).encode(), headers=headers,
                                         method="POST")
        with self.opener.open(request, timeout=30) as answer:
            return json.loads(answer.read())

    def get(self, path: str) -> dict:
        with self.opener.open(f"{self.url}{path}", timeout=30) as answer:
            return json.loads(answer.read())


def test_outcomes_become_a_cohort_that_trains_and_evaluates(tmp_path: Path):
    data = tmp_path / "data"
    write_users(data / "console-users")
    console_port = free_port()
    env = dict(os.environ, LLNM_DATA_DIR=str(data), LLNM_PORT=str(free_port()), LLNM_METRICS_PORT=str(free_port()),
               LLNM_CONSOLE_PORT=str(console_port), LLNM_BIND_ADDRESS="127.0.0.1", LLNM_MIN_FREE_DISK_MB="1",
               LLNM_SERIES_IDLE_S="0.5", LLNM_STUDY_IDLE_S="0.5", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               OMP_NUM_THREADS="1")
    for key in ("LLNM_BROKER_URL", "LLNM_DESTINATIONS", "LLNM_INFERENCE_BACKEND", "LLNM_RESULTS_DIR",
                "LLNM_CONSOLE_USERS_FILE", "LLNM_NOTIFY_WEBHOOKS"):
        env.pop(key, None)
    phantom = tmp_path / "phantom"
    made = _llnm("phantom", "--out", str(phantom), "--studies", str(STUDIES), "--seed", "8", env=env)
    assert made.returncode == 0, made.stderr[-2000:]
    with (phantom / "labels.csv").open() as fh:
        truth = {r["study_uid"]: int(r["llnm"]) for r in csv.DictReader(fh)}
    assert len(truth) == STUDIES and 0 < sum(truth.values()) < STUDIES

    serve = Service("serve", [str(VENV_BIN / "llnm"), "serve"], env, tmp_path).start()
    url = f"http://127.0.0.1:{console_port}"
    try:
        def up() -> bool:
            assert serve.process.poll() is None, serve.log_tail(3000)
            try:
                return urllib.request.urlopen(f"{url}/login", timeout=1).status == 200
            except OSError:
                return False

        assert wait_for(up, 90, 0.2)
        sent = _llnm("send", str(phantom), "--to", f"LLNM@127.0.0.1:{env['LLNM_PORT']}", "--aet", "MODALITY", env=env)
        assert sent.returncode == 0, sent.stdout + sent.stderr
        audit = AuditTrail.for_data_dir(data)

        def all_done() -> bool:
            rows = [audit.study(uid) for uid in truth]
            return all(r is not None and r["state"] in A.FINAL_STATES for r in rows)

        assert wait_for(all_done, 1200, 1.0), audit.count_by_state()
        assert {audit.study(uid)["state"] for uid in truth} == {A.DONE}

        api = Api(url, "radiologist1")
        for uid, llnm in truth.items():
            outcome = {"llnm": True, "metastatic_nodes": 7, "largest_node_mm": 35} if llnm else {"llnm": False}
            answer = api.post(f"/api/studies/{uid}/outcome", outcome)
            assert answer["ok"]
        quality = api.get("/api/quality")["overall"]["outcomes"]
        assert quality["studies"] + sum(1 for uid in truth if audit.study(uid)["probability"] is None) == STUDIES
    finally:
        serve.stop()

    cohort = tmp_path / "cohort"
    exported = _llnm("cohort", "export", "--out", str(cohort), "--json", env=env)
    assert exported.returncode == 0, exported.stdout + exported.stderr[-2000:]
    report = json.loads(exported.stdout)
    studies = read_layout(cohort)
    assert report["studies"] == len(studies) >= STUDIES - 2, report
    assert all(s.llnm == truth[s.study_uid] for s in studies)
    assert all(s.risk_level == (3 if s.llnm else 1) for s in studies)  # the paper's stage: a node > 3 cm

    model = tmp_path / "model"
    trained = _llnm("train", "--data", str(cohort), "--out", str(model), "--preset", "tiny", "--epochs", "3",
                    "--val-fraction", "0.3", "--atlas-views", "4", "--nice", "0", "--no-progress", env=env)
    assert trained.returncode == 0, trained.stdout[-2000:] + trained.stderr[-3000:]
    assert (model / "model.pt").is_file()
    evaluated = _llnm("evaluate", "--data", str(cohort), "--model", str(model), "--out", str(tmp_path / "eval"),
                      "--bootstrap", "20", "--examples", "1", "--atlas-studies", "3", "--no-progress", env=env)
    assert evaluated.returncode == 0, evaluated.stdout[-2000:] + evaluated.stderr[-3000:]
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["studies"] == len(studies) and 0.0 <= metrics["metrics"]["auc"] <= 1.0
