"""Single sign-on with OpenID Connect (Authlib's Starlette client), as an option beside the users file.

With `LLNM_CONSOLE_OIDC_ISSUER` set, the login page offers "single sign-on": the authorization code flow
(state and nonce kept in the session, the ID token's signature, issuer, audience, expiry and nonce checked
by Authlib against the issuer's discovery document and keys). The console role comes from the claim
`LLNM_CONSOLE_OIDC_ROLE_CLAIM` (a list or a string) through `LLNM_CONSOLE_OIDC_ROLES`
(`group:role,...`, the first listed group the user has wins); a user with no mapped group is refused.
The session then lasts `LLNM_CONSOLE_SESSION_HOURS`; a role changed at the identity provider applies at
the next login. The callback URL sent to the provider is `LLNM_CONSOLE_OIDC_REDIRECT_URI` when set (behind
a TLS ingress the request arrives as plain http, and uvicorn trusts X-Forwarded-Proto only from
127.0.0.1, so a URL built from the request would not match the registered https:// one), else the
request's own /login/oidc/callback. The user name shown and logged is `preferred_username` (else `sub`),
cut to the console's name alphabet.
"""

from __future__ import annotations

import re
from typing import Any

from llnm.config import Settings
from llnm.console.auth import ROLES, User

_UNSAFE = re.compile(r"[^A-Za-z0-9._@-]")


class OidcConfigError(ValueError):
    """LLNM_CONSOLE_OIDC_* are incomplete or name an unknown role."""


def role_map(text: str) -> list[tuple[str, str]]:
    pairs = []
    for part in (text or "").split(","):
        part = part.strip()
        if not part:
            continue
        group, sep, role = part.rpartition(":")
        if not sep or not group or role not in ROLES:
            raise OidcConfigError(f"LLNM_CONSOLE_OIDC_ROLES: 'group:role' with a role of {', '.join(ROLES)}")
        pairs.append((group, role))
    return pairs


def user_from_claims(claims: dict[str, Any], claim: str, mapping: list[tuple[str, str]]) -> User | None:
    """The console user of these ID token / userinfo claims; None without a mapped group."""
    value = claims.get(claim)
    groups = {value} if isinstance(value, str) else {str(v) for v in value or [] if isinstance(v, (str, int))}
    role = next((r for g, r in mapping if g in groups), None)
    name = _UNSAFE.sub("_", str(claims.get("preferred_username") or claims.get("sub") or ""))[:64]
    if role is None or not name:
        return None
    return User(name, role)


class Oidc:
    """The registered OpenID Connect client and its role mapping."""

    def __init__(self, settings: Settings) -> None:
        from authlib.integrations.starlette_client import OAuth

        if not (settings.console_oidc_client_id and settings.console_oidc_client_secret):
            raise OidcConfigError("LLNM_CONSOLE_OIDC_ISSUER needs LLNM_CONSOLE_OIDC_CLIENT_ID and _CLIENT_SECRET")
        self.mapping = role_map(settings.console_oidc_roles)
        if not self.mapping:
            raise OidcConfigError("LLNM_CONSOLE_OIDC_ROLES is empty: no identity provider user could get a role")
        self.claim = settings.console_oidc_role_claim
        self.redirect_uri = settings.console_oidc_redirect_uri.strip()
        if self.redirect_uri and not self.redirect_uri.startswith(("https://", "http://")):
            raise OidcConfigError("LLNM_CONSOLE_OIDC_REDIRECT_URI: the whole URL, https://<console>/login/oidc/callback")
        oauth = OAuth()
        oauth.register(
            "idp", client_id=settings.console_oidc_client_id, client_secret=settings.console_oidc_client_secret,
            server_metadata_url=settings.console_oidc_issuer.rstrip("/") + "/.well-known/openid-configuration",
            client_kwargs={"scope": "openid profile email", "timeout": 10.0})
        self.client = oauth.create_client("idp")

    async def redirect(self, request: Any, callback_url: str) -> Any:
        return await self.client.authorize_redirect(request, callback_url)

    async def user(self, request: Any) -> User | None:
        """The user of the provider's answer. Authlib checks the state, the code exchange, the ID token's
        signature and claims (nonce included) and raises OAuthError, a joserfc JoseError or an httpx
        error on any failure."""
        token = await self.client.authorize_access_token(request)
        claims = dict(token.get("userinfo") or {})
        return user_from_claims(claims, self.claim, self.mapping)
