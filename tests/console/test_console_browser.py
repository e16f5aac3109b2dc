"""The console in headless Chromium (Debian's chromium driven by playwright) against a real `llnm serve`
that sends its results to a real Orthanc: studies in every state, the list, a study page with its key
image, each operator action changing the state and the audit trail, the roles (no login: no data; a
viewer cannot act; patient data only for the radiologist). Screenshots: artifacts/console/<step>.png."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path

import pydicom
import pytest
from console_support import PASSWORD, write_users
from support import VENV_BIN, Orthanc, Service, free_port, make_us, orthanc_available, wait_for

from llnm import audit as A
from llnm.audit import AuditTrail
from llnm.phantom import write_phantom_set

pytestmark = [pytest.mark.slow, pytest.mark.e2e]

REPO_ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO_ROOT / "artifacts" / "console"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def _need_tools() -> None:
    missing = [what for what, ok in (("chromium (apt chromium)", Path(CHROMIUM).exists()),
                                     ("Orthanc (apt orthanc)", orthanc_available())) if not ok]
    if importlib.util.find_spec("playwright") is None:
        missing.append("playwright (pip, the dev extra)")
    if missing:
        message = "console browser test environment incomplete: " + "; ".join(missing)
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)


def _llnm(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([str(VENV_BIN / "llnm"), *args], capture_output=True, text=True, env=env, timeout=300)


def _study_of(folder: Path) -> tuple[str, list[Path]]:
    files = sorted(folder.glob("*.dcm"))
    return str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID), files


@pytest.fixture
def served(tmp_path: Path):
    _need_tools()
    orthanc = Orthanc(tmp_path / "orthanc").start()
    data = tmp_path / "data"
    write_users(data / "console-users")
    console_port = free_port()
    env = dict(os.environ, LLNM_DATA_DIR=str(data), LLNM_PORT=str(free_port()), LLNM_METRICS_PORT=str(free_port()),
               LLNM_CONSOLE_PORT=str(console_port), LLNM_BIND_ADDRESS="127.0.0.1", LLNM_MIN_FREE_DISK_MB="1",
               LLNM_ALLOWED_AES="MODALITY;series_idle_s=0.5;study_idle_s=0.5,SLOW;series_idle_s=3600;study_idle_s=3600",
               LLNM_DESTINATIONS=orthanc.node, LLNM_RESULTS_DIR=str(data / "results"), LLNM_SEND_BACKOFF_S="0.5",
               HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", OMP_NUM_THREADS="1")
    for key in ("LLNM_BROKER_URL", "LLNM_INFERENCE_BACKEND", "LLNM_CONSOLE_USERS_FILE", "LLNM_NOTIFY_WEBHOOKS"):
        env.pop(key, None)
    serve = Service("serve", [str(VENV_BIN / "llnm"), "serve"], env, tmp_path).start()
    url = f"http://127.0.0.1:{console_port}"

    def up() -> bool:
        assert serve.process.poll() is None, serve.log_tail(3000)
        try:
            return urllib.request.urlopen(f"{url}/login", timeout=1).status == 200
        except OSError:
            return False

    try:
        assert wait_for(up, 90, 0.2), serve.log_tail(3000)
        yield env, url, AuditTrail.for_data_dir(data), tmp_path
    finally:
        serve.stop()
        orthanc.stop()


def _state(audit: AuditTrail, uid: str, states: tuple[str, ...], timeout_s: float = 180) -> str:
    row = wait_for(lambda: (r := audit.study(uid)) and r["state"] in states and r, timeout_s, 0.3)
    assert row, f"{uid}: {audit.study(uid)} {[e['event'] for e in audit.events(uid)]}"
    return row["state"]


def _every_state(env: dict[str, str], audit: AuditTrail, tmp_path: Path) -> dict[str, str]:
    """Studies in every state: processed for real (done), waiting for completion (receiving, twice), failed
    with spooled instances, ignored (no ultrasound image), and held queued/processing/sending rows."""
    phantom = write_phantom_set(tmp_path / "phantom", 4, seed=21)
    folders = sorted(p for p in phantom.iterdir() if p.is_dir() and list(p.glob("*.dcm")))
    to = f"LLNM@127.0.0.1:{env['LLNM_PORT']}"
    uids: dict[str, str] = {}
    uids["done"], files = _study_of(folders[0])
    assert _llnm("send", *map(str, files), "--to", to, "--aet", "MODALITY", env=env).returncode == 0
    for key, folder in (("waiting", folders[1]), ("discard", folders[2])):
        uids[key], files = _study_of(folder)
        assert _llnm("send", *map(str, files), "--to", to, "--aet", "SLOW", env=env).returncode == 0
    uids["failed"], files = _study_of(folders[3])
    for f in files:  # spooled as the listener does, then dead-lettered as the worker does
        ds = pydicom.dcmread(f, stop_before_pixels=True)
        target = (Path(env["LLNM_DATA_DIR"]) / "spool" / uids["failed"] / ds.SeriesInstanceUID
                  / f"{ds.SOPInstanceUID}.dcm")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(f, target)
    audit.set_state(uids["failed"], A.FAILED, event="dead letter", calling_ae="MODALITY", instances=len(files),
                    detail={"stage": "process", "attempts": 6, "error": "ConnectionError"}, error="ConnectionError")
    other = tmp_path / "other"
    other.mkdir()
    ct = make_us("1.2.826.0.1.3680043.10.547.1", "1.2.826.0.1.3680043.10.547.1.1", modality="CT")
    ct.save_as(other / "ct.dcm", enforce_file_format=True)
    uids["ignored"] = str(ct.StudyInstanceUID)
    assert _llnm("send", str(other / "ct.dcm"), "--to", to, "--aet", "MODALITY", env=env).returncode == 0
    far = time.time() + 3600  # held: no queue claims them during the test
    for n, state in enumerate((A.QUEUED, A.PROCESSING, A.SENDING), start=1):
        uid = f"1.2.826.0.1.3680043.10.548.{n}"
        audit.set_state(uid, state, event="receiving", calling_ae="PACS", next_at=far)
        uids[state] = uid
    assert _state(audit, uids["done"], (A.DONE,)) == A.DONE
    assert _state(audit, uids["ignored"], (A.IGNORED,)) == A.IGNORED
    assert audit.study(uids["waiting"])["state"] == A.RECEIVING
    return uids


def _login(browser, url: str, role: str):
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    page.goto(f"{url}/login")
    page.fill("input[name=username]", f"{role}1")
    page.fill("input[name=password]", PASSWORD)
    page.click("#login button")
    page.wait_for_url(f"{url}/studies")
    return context, page


def _shot(page, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def _trail(page) -> list[str]:
    return page.locator("#trail td.event").all_inner_texts()


def test_console_in_chromium(served):
    from playwright.sync_api import sync_playwright

    env, url, audit, tmp_path = served
    uids = _every_state(env, audit, tmp_path)
    phantom_name = "PHANTOM^"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            # no login: no data, every page sends to the login form
            anonymous = browser.new_context()
            page = anonymous.new_page()
            page.goto(f"{url}/studies/{uids['done']}")
            assert page.url == f"{url}/login" and uids["done"] not in page.content()
            assert page.request.get(f"{url}/api/studies").status == 401
            _shot(page, "01-login")
            anonymous.close()

            # viewer: the list in every state, a study without patient data, no action
            context, page = _login(browser, url, "viewer")
            for state in A.STATES:
                assert page.locator(f"tr.state-{state}").count() >= 1, state
            _shot(page, "02-list-viewer")
            page.click(f"a[href='/studies/{uids['done']}']")
            assert page.inner_text("#state") == "done" and page.inner_text("#finding")
            assert page.locator("#models tr").count() == 4  # the four models' versions
            html = page.content()
            assert phantom_name not in html and "patient-name" not in html
            assert page.locator("img.key-image").count() == 0
            assert page.locator("#actions").count() == 0 and page.locator("#feedback-form").count() == 0
            csrf = page.request.get(f"{url}/api/session").json()["csrf"]
            refused = page.request.post(f"{url}/api/studies/{uids['failed']}/actions/requeue",
                                        headers={"X-CSRF-Token": csrf}, data={})
            assert refused.status == 403 and audit.study(uids["failed"])["state"] == A.FAILED
            _shot(page, "03-study-viewer")
            page.goto(f"{url}/studies")
            page.select_option("select[name=state]", "failed")
            page.click("#filters button")
            assert page.locator("#studies tbody tr").count() == 1
            context.close()

            # operator: each action changes the state and the trail, naming the operator
            context, page = _login(browser, url, "operator")
            page.goto(f"{url}/studies/{uids['failed']}")
            page.click("#requeue")
            assert "queued again" in page.inner_text("#flash")
            assert "console: requeue" in _trail(page) and "operator1" in page.inner_text("#trail")
            assert _state(audit, uids["failed"], (A.DONE,)) == A.DONE

            page.goto(f"{url}/studies/{uids['waiting']}")
            assert page.inner_text("#state") == "receiving"
            page.click("#complete")
            assert "console: force completion" in _trail(page)
            assert _state(audit, uids["waiting"], (A.DONE,)) == A.DONE

            page.goto(f"{url}/studies/{uids['discard']}")
            page.click("#discard")
            assert page.inner_text("#state") == "ignored" and "console: discard" in _trail(page)
            assert not (Path(env["LLNM_DATA_DIR"]) / "spool" / uids["discard"]).exists()

            page.goto(f"{url}/studies/{uids['done']}")
            assert page.locator("#destinations td.answer").first.inner_text() == "stored"
            sent_before = sum(1 for e in audit.events(uids["done"]) if e["event"] == "sent")
            page.click("#destinations button.resend")
            assert "delivery queued" in page.inner_text("#flash") and "console: re-send" in _trail(page)
            sends = lambda: sum(1 for e in audit.events(uids["done"]) if e["event"] == "sent")  # noqa: E731
            assert wait_for(lambda: sends() > sent_before, 60)
            assert _state(audit, uids["done"], (A.DONE,)) == A.DONE
            page.reload()
            assert phantom_name not in page.content()
            _shot(page, "04-study-operator-after-resend")
            page.goto(f"{url}/health")
            assert page.locator("#health td.fail").count() == 0, page.inner_text("#health")
            _shot(page, "05-health")
            context.close()

            # radiologist: key image and patient identity, feedback recorded in the trail
            context, page = _login(browser, url, "radiologist")
            page.goto(f"{url}/studies/{uids['done']}")
            image = page.locator("img.key-image").first
            image.wait_for()
            assert page.evaluate("img => img.complete && img.naturalWidth > 100", image.element_handle())
            assert page.inner_text("#patient-name").startswith(phantom_name)
            assert page.locator("#actions").count() == 0
            page.check("input[name=agree][value=yes]")
            page.fill("input[name=tirads]", "4")
            page.click("#feedback-form button")
            assert "feedback recorded" in page.inner_text("#flash") and "feedback" in _trail(page)
            page.select_option("#outcome-form select[name=llnm]", "yes")
            page.fill("input[name=metastatic_nodes]", "3")
            page.fill("input[name=largest_node_mm]", "12")
            page.click("#outcome-form button")
            assert "Pathology: LLNM yes, 3 metastatic nodes, largest 12.0 mm" in page.inner_text("#outcome")
            _shot(page, "06-study-radiologist-key-image")
            page.goto(f"{url}/quality")
            assert "100.0 % of 1 studies" in page.inner_text("#agreement")
            _shot(page, "07-quality")
            context.close()
        finally:
            browser.close()
