"""The viewer test environment: Orthanc (DICOMweb) as the PACS, OHIF served from the same origin, and
Debian's chromium driven by playwright-core (ohif_driver.mjs).

Everything binds 127.0.0.1 on free ports and lives in temporary folders. `scripts/viewer-env.sh`
installs what is needed; `missing()` says what is absent so the tests can skip with a reason.
"""

from __future__ import annotations

import http.client
import http.server
import json
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

OHIF_VERSION = "3.13.2"
VIEWER_DIR = Path(__file__).resolve().parent
REPO_ROOT = VIEWER_DIR.parents[1]
ARTIFACTS_DIR = REPO_ROOT / "artifacts" / "viewer"
CHROMIUM = "/usr/bin/chromium"
PLUGIN_DIRS = (Path("/usr/share/orthanc/plugins"), Path("/usr/lib/orthanc"))


def cache_dir() -> Path:
    """Where scripts/viewer-env.sh keeps the OHIF dist (outside the repository)."""
    base = os.environ.get("LLNM_VIEWER_CACHE") or str(
        Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "llnm-viewer"
    )
    return Path(base)


def ohif_dist() -> Path:
    return cache_dir() / f"ohif-{OHIF_VERSION}" / "dist"


def dicomweb_plugin() -> Path | None:
    for d in PLUGIN_DIRS:
        for p in sorted(d.glob("libOrthancDicomWeb.so*")):
            return p
    return None


def missing() -> list[str]:
    """What the viewer tests need and this machine lacks (empty: all present)."""
    out = []
    if not shutil.which("Orthanc"):
        out.append("Orthanc (apt orthanc)")
    if dicomweb_plugin() is None:
        out.append("Orthanc DICOMweb plugin (apt orthanc-dicomweb)")
    if not Path(CHROMIUM).exists():
        out.append("chromium (apt chromium)")
    if not shutil.which("node"):
        out.append("node")
    if not (VIEWER_DIR / "node_modules" / "playwright-core").is_dir():
        out.append("tests/viewer/node_modules/playwright-core (npm ci)")
    if not (ohif_dist() / "index.html").is_file():
        out.append(f"OHIF {OHIF_VERSION} dist in {ohif_dist()}")
    if out:
        out.append("-> run scripts/viewer-env.sh")
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Orthanc:
    """One private Orthanc with the DICOMweb plugin, temp storage, HTTP on loopback, no DICOM port."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.http_port = free_port()
        self.url = f"http://127.0.0.1:{self.http_port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout_s: float = 60.0) -> "Orthanc":
        plugin = dicomweb_plugin()
        assert plugin is not None
        storage = self.workdir / "storage"
        storage.mkdir(parents=True, exist_ok=True)
        config = {
            "Name": "llnm-viewer-test",
            "StorageDirectory": str(storage),
            "IndexDirectory": str(storage),
            "HttpPort": self.http_port,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "DicomServerEnabled": False,
            "HttpsVerifyPeers": False,
            "StorageCompression": False,
            "Plugins": [str(plugin)],
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "EnableWado": True, "WadoRoot": "/wado", "Ssl": False},
        }
        cfg = self.workdir / "orthanc.json"
        cfg.write_text(json.dumps(config))
        log = open(self.workdir / "orthanc.log", "wb")
        self.proc = subprocess.Popen(["Orthanc", str(cfg)], stdout=log, stderr=subprocess.STDOUT, cwd=self.workdir)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"Orthanc exited: {(self.workdir / 'orthanc.log').read_text()[-2000:]}")
            try:
                self.get("/plugins/dicom-web")
                return self
            except OSError:
                time.sleep(0.2)
        self.stop()
        raise TimeoutError("Orthanc did not answer")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)

    def get(self, path: str) -> Any:
        with urllib.request.urlopen(self.url + path, timeout=30) as r:
            return json.loads(r.read())

    def upload(self, path: Path) -> dict[str, Any]:
        """Store one DICOM file through the REST API (what a C-STORE would do, minus the network)."""
        req = urllib.request.Request(self.url + "/instances", data=Path(path).read_bytes(), method="POST")
        req.add_header("Content-Type", "application/dicom")
        with urllib.request.urlopen(req, timeout=60) as r:
            answer = json.loads(r.read())
        if answer.get("Status") not in {"Success", "AlreadyStored"}:
            raise RuntimeError(f"Orthanc refused {path}: {answer}")
        return answer

    def series_modalities(self, study_uid: str) -> list[str]:
        found = self._find("Study", {"StudyInstanceUID": study_uid})
        mods = []
        for s in self.get(f"/studies/{found[0]}/series"):
            mods.append(s["MainDicomTags"].get("Modality", ""))
        return sorted(mods)

    def _find(self, level: str, query: dict[str, str]) -> list[str]:
        body = json.dumps({"Level": level, "Query": query}).encode()
        req = urllib.request.Request(self.url + "/tools/find", data=body, method="POST")
        with urllib.request.urlopen(req, timeout=30) as r:
            return json.loads(r.read())


def app_config() -> str:
    """OHIF's app-config.js: one DICOMweb source at this origin's /dicom-web, no dialogs beyond the tour."""
    return """window.config = {
  routerBasename: '/',
  extensions: [],
  modes: [],
  customizationService: {},
  showStudyList: true,
  maxNumberOfWebWorkers: 1,
  showWarningMessageForCrossOrigin: false,
  showCPUFallbackMessage: false,
  showLoadingIndicator: true,
  investigationalUseDialog: { option: 'never' },
  showErrorDetails: 'always',
  defaultDataSourceName: 'orthanc',
  dataSources: [{
    namespace: '@ohif/extension-default.dataSourcesModule.dicomweb',
    sourceName: 'orthanc',
    configuration: {
      friendlyName: 'LLNM test Orthanc',
      name: 'orthanc',
      wadoUriRoot: window.location.origin + '/wado',
      qidoRoot: window.location.origin + '/dicom-web',
      wadoRoot: window.location.origin + '/dicom-web',
      qidoSupportsIncludeField: false,
      imageRendering: 'wadors',
      thumbnailRendering: 'wadors',
      enableStudyLazyLoad: true,
      supportsFuzzyMatching: false,
      supportsWildcard: true,
      dicomUploadEnabled: false,
      bulkDataURI: { enabled: true },
      omitQuotationForMultipartRequest: true,
    },
  }],
};
"""


_TYPES = {".js": "application/javascript", ".mjs": "application/javascript", ".wasm": "application/wasm",
          ".css": "text/css", ".html": "text/html", ".json": "application/json", ".svg": "image/svg+xml",
          ".png": "image/png", ".ico": "image/x-icon", ".woff2": "font/woff2", ".woff": "font/woff"}
_PROXIED = ("/dicom-web/", "/wado")
_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "proxy-authorization"}


class _Handler(http.server.BaseHTTPRequestHandler):
    """Static OHIF + a pass-through proxy to Orthanc that keeps the Host header (BulkDataURIs)."""

    protocol_version = "HTTP/1.1"
    dist: Path
    upstream: tuple[str, int]
    config_js: bytes

    def log_message(self, format: str, *args: Any) -> None:  # quiet: the test keeps its own log
        return

    def do_GET(self) -> None:
        if self.path.startswith(_PROXIED):
            return self._proxy()
        self._static()

    def do_HEAD(self) -> None:
        self.do_GET()

    def do_POST(self) -> None:
        if self.path.startswith(_PROXIED):
            return self._proxy()
        self.send_error(405)

    def _proxy(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else None
        headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP}
        conn = http.client.HTTPConnection(*self.upstream, timeout=120)
        try:
            conn.request(self.command, self.path, body=body, headers=headers)
            resp = conn.getresponse()
            data = resp.read()
        finally:
            conn.close()
        self.send_response(resp.status)
        for k, v in resp.getheaders():
            if k.lower() not in _HOP and k.lower() != "content-length":
                self.send_header(k, v)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def _static(self) -> None:
        path = self.path.split("?", 1)[0].split("#", 1)[0]
        if path == "/app-config.js":
            return self._send(self.config_js, "application/javascript")
        target = (self.dist / path.lstrip("/")).resolve()
        if not str(target).startswith(str(self.dist)) or not target.is_file():
            target = self.dist / "index.html"  # single-page app: every route is index.html
        data = target.read_bytes()
        self._send(data, _TYPES.get(target.suffix, "application/octet-stream"))

    def _send(self, data: bytes, ctype: str) -> None:
        self.send_response(200)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)


class ViewerServer:
    """OHIF's dist and Orthanc's DICOMweb under one loopback origin."""

    def __init__(self, orthanc: Orthanc, dist: Path | None = None) -> None:
        handler = type("Handler", (_Handler,), {
            "dist": (dist or ohif_dist()).resolve(),
            "upstream": ("127.0.0.1", orthanc.http_port),
            "config_js": app_config().encode(),
        })
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, name="viewer-http", daemon=True)

    def start(self) -> "ViewerServer":
        self.thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def run_driver(job: dict[str, Any], timeout_s: float = 200.0) -> dict[str, Any]:
    """Run ohif_driver.mjs on one job (a study to walk through); returns what it saw."""
    # Its own process group: on a timeout node and the chromium it started go together.
    proc = subprocess.Popen(["node", str(VIEWER_DIR / "ohif_driver.mjs")], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=VIEWER_DIR, start_new_session=True)
    try:
        stdout, stderr = proc.communicate(json.dumps(job).encode(), timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        stdout, stderr = proc.communicate()
    lines = [ln for ln in stdout.decode(errors="replace").splitlines() if ln.startswith("{")]
    if not lines:
        raise RuntimeError(f"driver failed rc={proc.returncode}: {stderr.decode(errors='replace')[-3000:]}")
    result = json.loads(lines[-1])
    result["stderr"] = stderr.decode(errors="replace")[-3000:]
    return result
