"""Single sign-on: the console against a real (test) OpenID Connect provider served by uvicorn on loopback,
with signed ID tokens: the role from the group claim, refusal without a mapped group, a forged state or a
token for another nonce."""

from __future__ import annotations

import secrets
import threading
import time
import urllib.parse
from dataclasses import replace

import httpx
import pytest
from joserfc import jwt
from joserfc.jwk import KeySet, RSAKey
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse
from starlette.routing import Route
from starlette.testclient import TestClient
from support import free_port

from llnm.console.app import create_app
from llnm.console.oidc import OidcConfigError, role_map, user_from_claims

CLIENT_ID, CLIENT_SECRET = "llnm-console", "s3cret-" + secrets.token_hex(8)


class Provider:
    """A minimal OpenID Connect provider: discovery, authorize (logs in `next_user` at once), token, keys."""

    def __init__(self) -> None:
        import uvicorn

        self.port = free_port()
        self.issuer = f"http://127.0.0.1:{self.port}"
        self.key = RSAKey.generate_key(2048, parameters={"kid": "k1"})
        self.codes: dict[str, dict] = {}
        self.next_user: dict = {}
        self.nonce_override: str | None = None
        app = Starlette(routes=[Route("/.well-known/openid-configuration", self.discovery),
                                Route("/authorize", self.authorize), Route("/token", self.token, methods=["POST"]),
                                Route("/jwks", self.jwks)])
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_config=None,
                                                    log_level="warning", lifespan="off"))
        threading.Thread(target=self.server.run, daemon=True).start()
        end = time.time() + 10
        while not self.server.started and time.time() < end:
            time.sleep(0.02)

    async def discovery(self, request: Request) -> JSONResponse:
        return JSONResponse({"issuer": self.issuer, "authorization_endpoint": f"{self.issuer}/authorize",
                             "token_endpoint": f"{self.issuer}/token", "jwks_uri": f"{self.issuer}/jwks",
                             "response_types_supported": ["code"], "subject_types_supported": ["public"],
                             "id_token_signing_alg_values_supported": ["RS256"]})

    async def authorize(self, request: Request) -> RedirectResponse:
        q = request.query_params
        assert q["client_id"] == CLIENT_ID and q["response_type"] == "code" and "openid" in q["scope"]
        code = secrets.token_urlsafe(16)
        self.codes[code] = {"nonce": q.get("nonce"), "redirect_uri": q["redirect_uri"], **self.next_user}
        return RedirectResponse(f"{q['redirect_uri']}?{urllib.parse.urlencode({'code': code, 'state': q['state']})}")

    async def token(self, request: Request) -> JSONResponse:
        form = await request.form()
        grant = self.codes.pop(str(form["code"]), None)
        if grant is None or form.get("redirect_uri") != grant["redirect_uri"]:  # RFC 6749 4.1.3
            return JSONResponse({"error": "invalid_grant"}, status_code=400)
        now = int(time.time())
        claims = {"iss": self.issuer, "aud": CLIENT_ID, "iat": now, "exp": now + 300, "sub": grant["sub"],
                  "nonce": self.nonce_override or grant["nonce"], "preferred_username": grant["username"],
                  "groups": grant["groups"]}
        id_token = jwt.encode({"alg": "RS256", "kid": "k1"}, claims, self.key)
        return JSONResponse({"access_token": secrets.token_urlsafe(16), "token_type": "Bearer", "expires_in": 300,
                             "id_token": id_token})

    async def jwks(self, request: Request) -> JSONResponse:
        return JSONResponse(KeySet([self.key]).as_dict(private=False))

    def stop(self) -> None:
        self.server.should_exit = True


@pytest.fixture
def provider():
    p = Provider()
    yield p
    p.stop()


def _sso(client: TestClient) -> httpx.Response:
    """The browser's walk: console -> provider -> console callback."""
    start = client.get("/login/oidc", follow_redirects=False)
    assert start.status_code == 302 and start.headers["location"].startswith("http://127.0.0.1:")
    back = httpx.get(start.headers["location"], follow_redirects=False)
    assert back.status_code in (302, 307)
    return client.get(back.headers["location"], follow_redirects=False)


def _client(seeded, provider, **more) -> TestClient:
    settings = replace(seeded.settings, console_oidc_issuer=provider.issuer, console_oidc_client_id=CLIENT_ID,
                       console_oidc_client_secret=CLIENT_SECRET,
                       console_oidc_roles="llnm-admins:admin,radiology:radiologist,it-ops:operator", **more)
    return TestClient(create_app(settings, seeded.audit), base_url="http://console.test")


def test_single_sign_on_gives_the_mapped_role(seeded, provider):
    client = _client(seeded, provider)
    assert 'id="sso"' in client.get("/login").text
    provider.next_user = {"sub": "u-17", "username": "dr.house", "groups": ["staff", "radiology"]}
    answer = _sso(client)
    assert answer.status_code == 303 and answer.headers["location"] == "/studies"
    session = client.get("/api/session").json()
    assert session["user"] == "dr.house" and session["role"] == "radiologist"
    outcome = client.post(f"/api/studies/{seeded.uids['done']}/outcome", json={"llnm": False},
                          headers={"X-CSRF-Token": session["csrf"]})
    assert outcome.status_code == 200
    assert [e for e in seeded.audit.events(seeded.uids["done"]) if e["event"] == "outcome"][0]["by"] == "dr.house"
    denied = client.post(f"/api/studies/{seeded.uids['failed']}/actions/requeue", json={},
                         headers={"X-CSRF-Token": session["csrf"]})
    assert denied.status_code == 403


def test_no_mapped_group_no_session(seeded, provider):
    client = _client(seeded, provider)
    provider.next_user = {"sub": "u-18", "username": "visitor", "groups": ["staff"]}
    answer = _sso(client)
    assert answer.status_code == 403 and "no console role" in answer.text
    assert client.get("/api/session").status_code == 401


def test_forged_state_or_nonce_is_refused(seeded, provider):
    client = _client(seeded, provider)
    provider.next_user = {"sub": "u-19", "username": "mallory", "groups": ["llnm-admins"]}
    start = client.get("/login/oidc", follow_redirects=False)
    back = httpx.get(start.headers["location"], follow_redirects=False).headers["location"]
    forged = back.replace("state=", "state=x")
    assert client.get(forged, follow_redirects=False).headers["location"] == "/login"
    assert client.get("/api/session").status_code == 401
    provider.nonce_override = "replayed-nonce"
    assert _sso(client).headers["location"] == "/login"
    assert client.get("/api/session").status_code == 401


def test_role_mapping_and_configuration_errors(seeded):
    mapping = role_map("a:viewer, b:c:operator")
    assert mapping == [("a", "viewer"), ("b:c", "operator")]
    assert user_from_claims({"sub": "x y", "groups": "b:c"}, "groups", mapping).role == "operator"
    assert user_from_claims({"sub": "x", "groups": ["z"]}, "groups", mapping) is None
    assert user_from_claims({"sub": "<x>", "groups": ["a"]}, "groups", mapping).name == "_x_"
    with pytest.raises(OidcConfigError):
        role_map("a:root")
    with pytest.raises(OidcConfigError):
        create_app(replace(seeded.settings, console_oidc_issuer="http://127.0.0.1:9", console_oidc_client_id="x"),
                   seeded.audit)


def test_the_configured_redirect_uri_is_the_callback_sent_to_the_provider(seeded, provider):
    """Behind the Helm ingress the console sees plain http (uvicorn trusts X-Forwarded-Proto only from
    127.0.0.1): LLNM_CONSOLE_OIDC_REDIRECT_URI is the registered https:// callback, in the authorization
    request and in the code exchange; without it the request's own URL is used."""
    plain = _client(seeded, provider).get("/login/oidc", follow_redirects=False)
    query = urllib.parse.parse_qs(urllib.parse.urlsplit(plain.headers["location"]).query)
    assert query["redirect_uri"] == ["http://console.test/login/oidc/callback"]

    registered = "https://console.hospital.example/login/oidc/callback"
    client = _client(seeded, provider, console_oidc_redirect_uri=registered)
    provider.next_user = {"sub": "u-20", "username": "dr.grey", "groups": ["radiology"]}
    start = client.get("/login/oidc", follow_redirects=False, headers={"X-Forwarded-Proto": "https"})
    query = urllib.parse.parse_qs(urllib.parse.urlsplit(start.headers["location"]).query)
    assert query["redirect_uri"] == [registered]
    back = httpx.get(start.headers["location"], follow_redirects=False).headers["location"]
    assert back.startswith(registered + "?")
    answer = client.get(urllib.parse.urlsplit(back)._replace(scheme="", netloc="").geturl(), follow_redirects=False)
    assert answer.status_code == 303 and answer.headers["location"] == "/studies"
    assert client.get("/api/session").json()["user"] == "dr.grey"
    with pytest.raises(OidcConfigError, match="LLNM_CONSOLE_OIDC_REDIRECT_URI"):
        _client(seeded, provider, console_oidc_redirect_uri="console.hospital.example/login/oidc/callback")
