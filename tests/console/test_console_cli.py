"""`llnm console add-user` and `llnm console` as an operator runs them beside `llnm listener`/`llnm worker`:
the users file, the console over an existing audit database, its metrics, and a clean stop on SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

from support import VENV_BIN, free_port, wait_for

from llnm import audit as A
from llnm.audit import AuditTrail


def test_add_user_then_console_serves_the_data_dir(tmp_path: Path):
    data = tmp_path / "data"
    env = dict(os.environ, LLNM_DATA_DIR=str(data), LLNM_CONSOLE_PORT=str(free_port()),
               LLNM_METRICS_PORT=str(free_port()), LLNM_BIND_ADDRESS="127.0.0.1")
    env.pop("LLNM_CONSOLE_USERS_FILE", None)
    added = subprocess.run([str(VENV_BIN / "llnm"), "console", "add-user", "ops", "--role", "operator"],
                           input="a long password\n", capture_output=True, text=True, env=env, timeout=60)
    assert added.returncode == 0, added.stderr
    users = data / "console-users"
    assert users.read_text().startswith("ops operator $argon2id$") and "a long password" not in users.read_text()
    assert stat.S_IMODE(users.stat().st_mode) == 0o600
    short = subprocess.run([str(VENV_BIN / "llnm"), "console", "add-user", "x", "--role", "operator"],
                           input="short\n", capture_output=True, text=True, env=env, timeout=60)
    assert short.returncode == 2
    bad_role = subprocess.run([str(VENV_BIN / "llnm"), "console", "add-user", "y", "--role", "root"],
                              input="a long password\n", capture_output=True, text=True, env=env, timeout=60)
    assert bad_role.returncode == 2 and "role must be one of" in bad_role.stdout

    audit = AuditTrail.for_data_dir(data)
    audit.set_state("1.2.826.0.1.3680043.10.550.1", A.DONE, calling_ae="PACS", probability=0.3, risk_level=1)
    log = open(tmp_path / "console.log", "wb")
    proc = subprocess.Popen([str(VENV_BIN / "llnm"), "console"], env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    url = f"http://127.0.0.1:{env['LLNM_CONSOLE_PORT']}"
    try:
        def up() -> bool:
            assert proc.poll() is None, (tmp_path / "console.log").read_text()[-2000:]
            try:
                return urllib.request.urlopen(f"{url}/login", timeout=1).status == 200
            except OSError:
                return False

        assert wait_for(up, 60, 0.2)
        try:
            urllib.request.urlopen(f"{url}/api/studies", timeout=5)
            raise AssertionError("answered without a login")
        except urllib.error.HTTPError as exc:
            assert exc.code == 401
        opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor())
        login = urllib.request.Request(f"{url}/api/login", data=json.dumps({"username": "ops", "password":
                                       "a long password"}).encode(), headers={"Content-Type": "application/json"})
        assert json.loads(opener.open(login, timeout=10).read())["role"] == "operator"
        studies = json.loads(opener.open(f"{url}/api/studies", timeout=10).read())["studies"]
        assert [s["study_uid"] for s in studies] == ["1.2.826.0.1.3680043.10.550.1"]
        metrics = urllib.request.urlopen(f"http://127.0.0.1:{env['LLNM_METRICS_PORT']}/metrics", timeout=5).read()
        assert b'llnm_outcome_studies{scanner_model="all"} 0.0' in metrics
        os.killpg(proc.pid, signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
        logged = (tmp_path / "console.log").read_text()
        assert "a long password" not in logged and "login" in logged
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()


def test_a_refused_console_setting_ends_llnm_console_with_its_reason_not_a_traceback(tmp_path: Path):
    env = dict(os.environ, LLNM_DATA_DIR=str(tmp_path / "data"), LLNM_CONSOLE_PORT=str(free_port()),
               LLNM_METRICS_PORT="0", LLNM_BIND_ADDRESS="127.0.0.1", LLNM_CONSOLE_SECRET_KEY="too short")
    run = subprocess.run([str(VENV_BIN / "llnm"), "console"], capture_output=True, text=True, env=env, timeout=60)
    assert run.returncode == 1 and "LLNM_CONSOLE_SECRET_KEY" in run.stdout
    assert "Traceback" not in run.stdout + run.stderr and "too short" not in run.stdout + run.stderr
