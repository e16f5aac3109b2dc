"""The console as a Starlette application: HTML pages (Jinja2) and a JSON API over the same functions.

Every route but /login and /static needs a session (pages redirect to /login, the API answers 401); a
route that changes anything needs its permission (llnm.console.auth) and the session's CSRF token.
Responses are never cached and carry a strict Content-Security-Policy; URLs hold Study Instance UIDs and
filters only, never a patient datum. Nothing here parses HTTP: Starlette and uvicorn do.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.sessions import SessionMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from llnm import RESEARCH_USE_STATEMENT, __version__
from llnm import audit as A
from llnm.audit import AuditTrail
from llnm.config import Settings
from llnm.console import actions, cohort, quality, studypage
from llnm.console.auth import (ACT, FEEDBACK, READ, LoginThrottle, User, Users, new_csrf_token, same_token,
                               secret_key)
from llnm.observability.logs import get_logger
from llnm.storage.names import InvalidUID, validate_uid
from llnm.worker.destinations import parse_destinations

log = get_logger(__name__)

HERE = Path(__file__).resolve().parent
PAGE_SIZES = (25, 50, 100, 200)
MAX_UPLOAD_BYTES = 64 * 1024 * 1024  # a SEG or SR sent back from a viewer
#: a login, an action, an outcome or a logout (JSON or form): a few hundred bytes; anything larger is
#: refused (413) before it is read whole, logged in or not
MAX_BODY_BYTES = 64 * 1024
#: feedback: its outline keeps at most 2000 [row, col] points, about 100 KB as JSON (more URL-encoded in
#: the page's form), so 1 MiB holds the largest legitimate one with room to spare
MAX_FEEDBACK_BYTES = 1024 * 1024
#: name -> () -> (ok, text): live checks the embedding service passes in (workers, models, broker)
Check = Callable[[], "tuple[bool, str]"]

_HEADERS = {
    "Cache-Control": "no-store",
    "Content-Security-Policy": "default-src 'self'; img-src 'self'; style-src 'self'; script-src 'none';"
                               " form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
}


class SecurityHeaders:
    """ASGI middleware: the headers above on every response."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: dict) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                present = {k.lower() for k, _ in headers}
                headers += [(k.lower().encode(), v.encode()) for k, v in _HEADERS.items()
                            if k.lower().encode() not in present]
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, send_with_headers)


@dataclass
class Console:
    """What the routes share."""

    settings: Settings
    audit: AuditTrail
    users: Users
    checks: dict[str, Check] = field(default_factory=dict)
    phi_roles: frozenset[str] = frozenset()
    oidc: Any = None  # llnm.console.oidc.Oidc when single sign-on is configured
    throttle: LoginThrottle = field(default_factory=LoginThrottle)
    templates: Jinja2Templates = field(init=False)
    _cache: dict[str, tuple[float, Any]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.templates = Jinja2Templates(directory=str(HERE / "templates"))
        self.templates.env.filters["utc"] = _utc
        self.templates.env.filters["pct"] = lambda v: f"{100 * v:.1f} %" if _number(v) else ""
        self.templates.env.filters["num"] = lambda v, d=3: f"{v:.{d}f}" if _number(v) else ""

    def sees_phi(self, user: User) -> bool:
        return user.role in self.phi_roles

    def cached(self, key: str, ttl_s: float, compute: Callable[[], Any]) -> Any:
        """A value kept `ttl_s` seconds: the list's per-state counts and calling AEs cost a pass over the
        studies' indexes (about 15 ms each at 100,000 studies), not worth repeating on every page."""
        now = time.monotonic()
        hit = self._cache.get(key)
        if hit is None or now - hit[0] > ttl_s:
            hit = (now, compute())
            self._cache[key] = hit
        return hit[1]


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _utc(ts: float | None) -> str:
    return "" if not ts else time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ts)) + "Z"


# -- sessions, permissions, CSRF -----------------------------------------------------------------------
def _console(request: Request) -> Console:
    return request.app.state.console


def _user(request: Request) -> User | None:
    name, role = request.session.get("user"), request.session.get("role")
    if not name:
        return None
    if request.session.get("source") == "oidc":  # the identity provider vouched for it at login
        user = User(name, role) if _console(request).oidc is not None else None
    else:
        user = _console(request).users.lookup(name)
    if user is None or user.role != role or time.time() > float(request.session.get("expires", 0)):
        request.session.clear()  # removed, changed role, or the login is too old
        return None
    return user


def _api(request: Request) -> bool:
    return request.url.path.startswith("/api/")


def _need(request: Request, permission: str) -> User:
    user = _user(request)
    if user is None:
        raise HTTPException(401, "log in first")
    if not user.can(permission):
        raise HTTPException(403, f"the role {user.role} may not do this")
    return user


async def _check_csrf(request: Request, limit: int = MAX_BODY_BYTES) -> dict[str, Any]:
    """The request's form or JSON body (at most `limit` bytes), after the CSRF token matched the session's."""
    ctype = request.headers.get("content-type", "")
    data: dict[str, Any] = {}
    if ctype.startswith("application/json"):
        data = await _json_object(request, limit)
    elif ctype.startswith(("application/x-www-form-urlencoded", "multipart/form-data")):
        data = await _form(request, limit)
    given = request.headers.get("x-csrf-token") or data.get("csrf")
    if not same_token(request.session.get("csrf"), given):
        raise HTTPException(403, "missing or wrong CSRF token")
    return data


async def _json_object(request: Request, limit: int = MAX_BODY_BYTES) -> dict[str, Any]:
    await _bounded_body(request, limit)
    try:
        data = await request.json()
    except ValueError:
        raise HTTPException(400, "the body is not JSON") from None
    if not isinstance(data, dict):
        raise HTTPException(400, "a JSON object is expected")
    return data


async def _form(request: Request, limit: int = MAX_BODY_BYTES) -> dict[str, Any]:
    await _bounded_body(request, limit)
    return dict(await request.form())


def _uid(raw: str) -> str:
    try:
        return validate_uid(raw)
    except InvalidUID:
        raise HTTPException(404, "not a Study Instance UID") from None


def _render(request: Request, name: str, user: User | None, status: int = 200, **context: Any) -> Response:
    con = _console(request)
    context.update(user=user, csrf=request.session.get("csrf", ""), version=__version__,
                   research=RESEARCH_USE_STATEMENT, can_act=bool(user and user.can(ACT)),
                   can_feedback=bool(user and user.can(FEEDBACK)), sees_phi=bool(user and con.sees_phi(user)))
    return con.templates.TemplateResponse(request, name, context, status_code=status)


async def _http_error(request: Request, exc: HTTPException) -> Response:
    if _api(request):
        return JSONResponse({"error": exc.detail}, status_code=exc.status_code)
    if exc.status_code == 401:
        return RedirectResponse("/login", status_code=303)
    return _render(request, "error.html", _user(request), status=exc.status_code, message=exc.detail)


# -- login ---------------------------------------------------------------------------------------------
def _start_session(request: Request, user: User, source: str = "users-file") -> str:
    request.session.clear()
    token = new_csrf_token()
    hours = _console(request).settings.console_session_hours
    request.session.update(user=user.name, role=user.role, csrf=token, expires=time.time() + hours * 3600,
                           source=source)
    log.info("console login", user=user.name, role=user.role, reason=source)
    return token


async def oidc_login(request: Request) -> Response:
    oidc = _console(request).oidc
    if oidc is None:
        raise HTTPException(404, "single sign-on is not configured")
    return await oidc.redirect(request, oidc.redirect_uri or str(request.url_for("oidc_callback")))


async def oidc_callback(request: Request) -> Response:
    import httpx
    from authlib.integrations.base_client import OAuthError
    from joserfc.errors import JoseError

    oidc = _console(request).oidc
    if oidc is None:
        raise HTTPException(404, "single sign-on is not configured")
    try:
        user = await oidc.user(request)
    except (OAuthError, JoseError, httpx.HTTPError) as exc:  # state, code, signature, claims, provider down
        log.warning("console single sign-on refused", reason=type(exc).__name__)
        raise HTTPException(401, "single sign-on failed") from None
    if user is None:
        log.warning("console single sign-on refused", reason="no console role for this user")
        return _render(request, "error.html", None, status=403,
                       message="Your account has no console role: ask for one of the configured groups.")
    _start_session(request, user, source="oidc")
    return RedirectResponse("/studies", status_code=303)


async def login_page(request: Request) -> Response:
    if request.method == "GET":
        request.session.setdefault("csrf", new_csrf_token())
        con = _console(request)
        return _render(request, "login.html", None, no_users=con.users.count() == 0 and con.oidc is None,
                       sso=con.oidc is not None)
    form = await _form(request)
    if not same_token(request.session.get("csrf"), form.get("csrf")):
        raise HTTPException(403, "missing or wrong CSRF token: reload the login page")
    wait = _throttled(request, str(form.get("username", "")))
    if wait:
        return _render(request, "login.html", None, status=429, locked_minutes=wait)
    user = _authenticate(request, str(form.get("username", "")), str(form.get("password", "")))
    if user is None:
        return _render(request, "login.html", None, status=401, failed=True)
    _start_session(request, user)
    return RedirectResponse("/studies", status_code=303)


def _client(request: Request) -> str:
    return request.client.host if request.client else "unknown"


def _throttled(request: Request, name: str) -> int:
    """Minutes (rounded up) the login of `name` from this client stays locked; 0: it may be tried."""
    seconds = _console(request).throttle.retry_after(name, _client(request))
    return int(-(-seconds // 60)) if seconds > 0 else 0


def _authenticate(request: Request, name: str, password: str) -> User | None:
    con = _console(request)
    user = con.users.authenticate(name, password)
    if user is None:
        con.throttle.failed(name, _client(request))
        log.warning("console login refused", reason="wrong user name or password")
    else:
        con.throttle.succeeded(name)
    return user


async def api_login(request: Request) -> Response:
    """JSON login for scripts: a JSON body cannot be sent cross-site without a CORS preflight (login CSRF)."""
    if not request.headers.get("content-type", "").startswith("application/json"):
        raise HTTPException(415, "send a JSON object {username, password}")
    body = await _json_object(request)
    wait = _throttled(request, str(body.get("username", "")))
    if wait:
        raise HTTPException(429, f"too many failed logins: try again in {wait} minute(s)")
    user = _authenticate(request, str(body.get("username", "")), str(body.get("password", "")))
    if user is None:
        raise HTTPException(401, "wrong user name or password")
    return JSONResponse({"user": user.name, "role": user.role, "csrf": _start_session(request, user)})


async def logout(request: Request) -> Response:
    await _check_csrf(request)
    request.session.clear()
    return RedirectResponse("/login", status_code=303) if not _api(request) else JSONResponse({"ok": True})


async def api_session(request: Request) -> Response:
    user = _need(request, READ)
    return JSONResponse({"user": user.name, "role": user.role, "csrf": request.session.get("csrf")})


# -- studies -------------------------------------------------------------------------------------------
def _filters(request: Request) -> dict[str, Any]:
    q = request.query_params
    state = q.get("state", "")
    states = tuple(s for s in state.split(",") if s in A.STATES)
    risk = q.get("risk", "")
    raw = q.get("limit", "")  # isdigit() also takes "²", which int() refuses: ASCII digits only
    limit = int(raw) if raw.isascii() and raw.isdecimal() and int(raw) in PAGE_SIZES else 50
    after = None
    if q.get("after"):
        ts, _, uid = q["after"].partition("_")
        try:
            after = (float(ts), validate_uid(uid))
        except (ValueError, InvalidUID):
            raise HTTPException(400, "bad page cursor") from None
    return {"states": states, "calling_ae": q.get("ae") or None,
            "risk_level": int(risk) if risk in ("1", "2", "3") else None, "after": after, "limit": limit}


def _page(request: Request) -> tuple[list[dict[str, Any]], str | None, dict[str, Any]]:
    f = _filters(request)
    rows = _console(request).audit.page(**f)
    nxt = f"{rows[-1]['updated_at']!r}_{rows[-1]['study_uid']}" if len(rows) == f["limit"] else None
    return rows, nxt, f


async def studies_page(request: Request) -> Response:
    user = _need(request, READ)
    rows, nxt, f = _page(request)
    con = _console(request)
    query = {k: v for k, v in request.query_params.items() if k != "after"}
    return _render(request, "studies.html", user, rows=rows, next=nxt, query=query, states=A.STATES,
                   final=A.FINAL_STATES, aes=con.cached("aes", 30.0, con.audit.calling_aes), filters=f,
                   page_sizes=PAGE_SIZES, counts=con.cached("counts", 5.0, con.audit.count_by_state))


async def api_studies(request: Request) -> Response:
    _need(request, READ)
    rows, nxt, _ = _page(request)
    return JSONResponse({"studies": rows, "next": nxt})


def _view(request: Request, user: User, uid: str) -> dict[str, Any]:
    con = _console(request)
    view = studypage.study_view(con.audit, uid)
    if view is None:
        raise HTTPException(404, "no such study")
    view["identity"] = studypage.patient_identity(con.settings, uid) if con.sees_phi(user) else None
    view["key_images"] = (len(studypage.key_image_files(con.settings, uid, view["summary"]))
                          if con.sees_phi(user) else 0)
    view["configured_destinations"] = [n.label for n in parse_destinations(con.settings.destinations)]
    return view


async def study_page(request: Request) -> Response:
    user = _need(request, READ)
    uid = _uid(request.path_params["uid"])
    view = _view(request, user, uid)
    message = request.session.pop("flash", None)
    return _render(request, "study.html", user, uid=uid, v=view, message=message,
                   events_json=[json.dumps({k: v for k, v in e.items() if k not in ("ts", "event")},
                                           sort_keys=True) for e in view["events"]])


async def api_study(request: Request) -> Response:
    user = _need(request, READ)
    return JSONResponse(_view(request, user, _uid(request.path_params["uid"])))


async def key_image(request: Request) -> Response:
    user = _need(request, READ)
    con = _console(request)
    if not con.sees_phi(user):
        raise HTTPException(403, "key images show the frame as acquired: not for this role")
    uid = _uid(request.path_params["uid"])
    kept = con.audit.result(uid)
    files = studypage.key_image_files(con.settings, uid, kept["summary"] if kept else None)
    number = int(request.path_params["number"])
    if number >= len(files):
        raise HTTPException(404, "no such key image")
    return Response(studypage.render_png(files[number]), media_type="image/png")


# -- actions -------------------------------------------------------------------------------------------
async def act(request: Request) -> Response:
    user = _need(request, ACT)
    data = await _check_csrf(request)
    con = _console(request)
    uid = _uid(request.path_params["uid"])
    name = request.path_params["action"]
    if name == "requeue":
        outcome = actions.requeue(con.settings, con.audit, uid, user)
    elif name == "resend":
        outcome = actions.resend(con.settings, con.audit, uid, str(data.get("destination", "")), user)
    elif name == "complete":
        outcome = actions.force_complete(con.audit, uid, user)
    elif name == "discard":
        outcome = actions.discard(con.settings, con.audit, uid, user)
    else:
        raise HTTPException(404, "no such action")
    return _done(request, uid, outcome.ok, outcome.message)


def _done(request: Request, uid: str, ok: bool, message: str) -> Response:
    if _api(request):
        return JSONResponse({"ok": ok, "message": message}, status_code=200 if ok else 409)
    request.session["flash"] = message
    return RedirectResponse(f"/studies/{uid}", status_code=303)


def _int(value: Any, low: int, high: int, what: str) -> int | None:
    if value in (None, ""):
        return None
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise HTTPException(400, f"{what} must be a whole number") from None
    if not low <= number <= high:
        raise HTTPException(400, f"{what} must be between {low} and {high}")
    return number


def _float(value: Any, what: str) -> float | None:
    if value in (None, ""):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise HTTPException(400, f"{what} must be a number") from None
    if not 0 < number < 1000:
        raise HTTPException(400, f"{what} out of range")
    return number


def _bool(value: Any) -> bool | None:
    if value in (None, ""):
        return None
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "agree"):
        return True
    if text in ("0", "false", "no", "disagree"):
        return False
    raise HTTPException(400, "expected yes/no")


def _outline(value: Any) -> dict[str, Any] | None:
    """{"sop_instance_uid": UID, "frame": n, "points": [[row, col], ...]} (JSON, or its text in a form)."""
    if value in (None, ""):
        return None
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            raise HTTPException(400, "the outline must be JSON") from None
    try:
        points = [[float(r), float(c)] for r, c in value["points"]][:2000]
        outline = {"sop_instance_uid": validate_uid(value["sop_instance_uid"]),
                   "frame": int(value.get("frame") or 1), "points": points}
    except (KeyError, TypeError, ValueError, InvalidUID):
        raise HTTPException(400, "outline: sop_instance_uid, frame and at least 3 [row, col] points") from None
    if len(points) < 3:
        raise HTTPException(400, "outline: at least 3 points")
    from llnm.console.corrections import plausible_points

    if not plausible_points(points):
        raise HTTPException(400, "outline: every point must be a finite [row, col] within a frame (-1 to 65535)")
    return outline


def _known(request: Request, uid: str) -> None:
    if _console(request).audit.study(uid) is None:
        raise HTTPException(404, "no such study")


async def feedback(request: Request) -> Response:
    user = _need(request, FEEDBACK)
    data = await _check_csrf(request, MAX_FEEDBACK_BYTES)
    con = _console(request)
    uid = _uid(request.path_params["uid"])
    _known(request, uid)
    agree = _bool(data.get("agree"))
    tirads = _int(data.get("tirads"), 1, 5, "TI-RADS")
    size = _float(data.get("size_mm"), "size")
    outline = _outline(data.get("outline"))
    if agree is None and tirads is None and size is None and outline is None:
        raise HTTPException(400, "nothing to record")
    con.audit.add_feedback(uid, user.name, agree, tirads, size, outline, source="form")
    cohort.keep_sources(con.settings, uid)
    log.info("feedback recorded", study_uid=uid, user=user.name)
    return _done(request, uid, True, "feedback recorded")


async def feedback_dicom(request: Request) -> Response:
    """A corrected outline sent back from a viewer as a DICOM SEG or a TID 1500 SR (body: the Part 10 file)."""
    user = _need(request, FEEDBACK)
    await _check_csrf(request)
    con = _console(request)
    uid = _uid(request.path_params["uid"])
    _known(request, uid)
    body = await _bounded_body(request)
    from llnm.console.corrections import CorrectionError, outline_from_dicom

    try:
        outline, kind = outline_from_dicom(body, uid)
    except CorrectionError as exc:
        raise HTTPException(400, str(exc)) from None
    con.audit.add_feedback(uid, user.name, None, outline=outline, source=kind)
    cohort.keep_sources(con.settings, uid)
    log.info("feedback recorded", study_uid=uid, user=user.name, source=kind)
    return JSONResponse({"ok": True, "source": kind, "points": len(outline["points"])})


async def _bounded_body(request: Request, limit: int = MAX_UPLOAD_BYTES) -> bytes:
    """The request's body, refused (413) as soon as it is known to pass `limit` bytes: from its
    Content-Length before reading anything, else while streaming it, never read whole. Kept on the
    request (Starlette's own cache), so request.json() and request.form() parse these bytes."""
    declared = request.headers.get("content-length", "")
    if declared.isdecimal() and declared.isascii() and int(declared) > limit:
        raise HTTPException(413, "too large")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise HTTPException(413, "too large")
        chunks.append(chunk)
    request._body = b"".join(chunks)
    return request._body


async def outcome(request: Request) -> Response:
    user = _need(request, FEEDBACK)
    data = await _check_csrf(request)
    con = _console(request)
    uid = _uid(request.path_params["uid"])
    _known(request, uid)
    llnm = _bool(data.get("llnm"))
    if llnm is None:
        raise HTTPException(400, "llnm (yes/no) is required")
    nodes = _int(data.get("metastatic_nodes"), 0, 200, "metastatic nodes")
    largest = _float(data.get("largest_node_mm"), "largest metastatic node (mm)")
    con.audit.set_outcome(uid, user.name, llnm, nodes, largest)
    cohort.keep_sources(con.settings, uid)
    log.info("outcome recorded", study_uid=uid, user=user.name)
    return _done(request, uid, True, "outcome recorded")


# -- health and quality --------------------------------------------------------------------------------
def health_report(con: Console) -> dict[str, Any]:
    counts = con.audit.count_by_state()
    usage = shutil.disk_usage(con.settings.data_dir) if con.settings.data_dir.exists() else None
    free_mb = usage.free / 2**20 if usage else 0.0
    checks = {}
    for name, check in con.checks.items():
        try:
            ok, text = check()
        except Exception as exc:  # a check that breaks is a failed check, never a broken page
            ok, text = False, type(exc).__name__
        checks[name] = {"ok": ok, "text": text}
    nodes = [n.label for n in parse_destinations(con.settings.destinations)]
    sent = con.audit.last_sent()
    return {
        "queue_depth": counts.get(A.QUEUED, 0), "states": counts, "checks": checks,
        "disk": {"free_mb": round(free_mb), "watermark_mb": con.settings.min_free_disk_mb,
                 "ok": free_mb >= con.settings.min_free_disk_mb},
        "destinations": [{"destination": d, "last_success": sent.get(d)} for d in nodes],
        "errors": con.audit.latest_errors(),
    }


async def health_page(request: Request) -> Response:
    user = _need(request, READ)
    return _render(request, "health.html", user, h=health_report(_console(request)))


async def api_health(request: Request) -> Response:
    _need(request, READ)
    return JSONResponse(health_report(_console(request)))


async def quality_page(request: Request) -> Response:
    user = _need(request, READ)
    rep = quality.report(_console(request).audit)
    auc_line = quality.plot_points([m["outcomes"]["auc"] for m in rep["by_month"]])
    agree_line = quality.plot_points([m["agreement"]["rate"] for m in rep["by_month"]])
    return _render(request, "quality.html", user, q=rep, auc_line=auc_line, agree_line=agree_line)


async def api_quality(request: Request) -> Response:
    _need(request, READ)
    return JSONResponse(quality.report(_console(request).audit))


async def home(request: Request) -> Response:
    _need(request, READ)
    return RedirectResponse("/studies", status_code=303)


def create_app(settings: Settings, audit: AuditTrail | None = None, checks: dict[str, Check] | None = None,
               users: Users | None = None) -> Starlette:
    """The console over the data dir's audit database; `checks` are the live health checks to show."""
    console = Console(settings=settings, audit=audit or AuditTrail.for_data_dir(settings.data_dir),
                      users=users or Users(settings.console_users_path), checks=dict(checks or {}),
                      phi_roles=frozenset(r.strip() for r in settings.console_phi_roles.split(",") if r.strip()))
    if settings.console_oidc_issuer:
        from llnm.console.oidc import Oidc

        console.oidc = Oidc(settings)
    routes = [
        Route("/", home),
        Route("/login", login_page, methods=["GET", "POST"]),
        Route("/login/oidc", oidc_login),
        Route("/login/oidc/callback", oidc_callback, name="oidc_callback"),
        Route("/logout", logout, methods=["POST"]),
        Route("/studies", studies_page),
        Route("/studies/{uid}", study_page),
        Route("/studies/{uid}/key-image/{number:int}.png", key_image),
        Route("/studies/{uid}/actions/{action}", act, methods=["POST"]),
        Route("/studies/{uid}/feedback", feedback, methods=["POST"]),
        Route("/studies/{uid}/outcome", outcome, methods=["POST"]),
        Route("/health", health_page),
        Route("/quality", quality_page),
        Route("/api/login", api_login, methods=["POST"]),
        Route("/api/logout", logout, methods=["POST"]),
        Route("/api/session", api_session),
        Route("/api/studies", api_studies),
        Route("/api/studies/{uid}", api_study),
        Route("/api/studies/{uid}/actions/{action}", act, methods=["POST"]),
        Route("/api/studies/{uid}/feedback", feedback, methods=["POST"]),
        Route("/api/studies/{uid}/feedback/dicom", feedback_dicom, methods=["POST"]),
        Route("/api/studies/{uid}/outcome", outcome, methods=["POST"]),
        Route("/api/health", api_health),
        Route("/api/quality", api_quality),
        Mount("/static", StaticFiles(directory=str(HERE / "static")), name="static"),
    ]
    middleware = [
        Middleware(SecurityHeaders),
        Middleware(SessionMiddleware, secret_key=secret_key(settings.console_secret_key, settings.data_dir),
                   session_cookie="llnm_console", max_age=int(settings.console_session_hours * 3600),
                   same_site="strict", https_only=settings.console_secure_cookies),
    ]
    app = Starlette(routes=routes, middleware=middleware, exception_handlers={HTTPException: _http_error})
    app.state.console = console
    return app
