"""Authentication: anonymous, basic, and bearer tokens from the WWW-Authenticate challenge.

Flow (distribution's token spec, https://distribution.github.io/distribution/spec/auth/token/):
a request without a usable Authorization header gets 401 with a challenge;
``Basic`` means "send credentials", ``Bearer realm=..,service=..,scope=..`` means
"get a token from realm for this scope". Tokens are cached per scope set until
shortly before ``expires_in`` runs out (60 s when absent, as the spec says), and
dropped when the registry answers 401 to them (revoked or expired early).
Once the challenge is known, later scopes get their token before the first
request, saving a round trip per repository.

Nothing here logs or raises with a secret: exceptions name the registry, the
realm host and the HTTP status only.
"""
from __future__ import annotations

import base64
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

import requests

from registry.credentials import Credentials, CredentialsError, CredentialSource
from registry.errors import AuthError

log = logging.getLogger(__name__)

DEFAULT_TOKEN_LIFETIME = 60.0   # seconds, the token spec's default for a missing expires_in
MAX_REFRESH_MARGIN = 10.0       # renew this long before expiry (or 10% of a short lifetime)
CLIENT_ID = "imgfs"


@dataclass(frozen=True)
class Challenge:
    scheme: str            # lower-case: "basic" or "bearer"
    params: dict


def parse_challenge(header: str) -> Challenge | None:
    """Parse the first challenge of a WWW-Authenticate header (quoted strings with \\ escapes)."""
    header = (header or "").strip()
    if not header:
        return None
    scheme, _, rest = header.partition(" ")
    params: dict[str, str] = {}
    i, n = 0, len(rest)
    while i < n:
        while i < n and rest[i] in " ,":
            i += 1
        eq = rest.find("=", i)
        if eq < 0:
            break
        key = rest[i:eq].strip().lower()
        i = eq + 1
        if i < n and rest[i] == '"':
            i += 1
            buf = []
            while i < n and rest[i] != '"':
                if rest[i] == "\\" and i + 1 < n:
                    i += 1
                buf.append(rest[i])
                i += 1
            i += 1
            value = "".join(buf)
        else:
            end = rest.find(",", i)
            end = n if end < 0 else end
            value = rest[i:end].strip()
            i = end
        params[key] = value
    return Challenge(scheme.lower(), params)


Fetch = Callable[..., requests.Response]


class Authenticator:
    """Per-registry auth state, shared by all threads of one client.

    ``fetch(method, url, **requests_kwargs)`` performs an HTTP request with the
    client's retries/timeouts/TLS settings but without auth handling.
    """

    def __init__(self, registry: str, credentials: Credentials | None | CredentialSource, fetch: Fetch,
                 clock: Callable[[], float] = time.monotonic):
        self.registry = registry
        # credentials, or a callable giving them (a credential helper runs on first need only)
        self._source = credentials if callable(credentials) else (lambda: credentials)
        self._loaded = False
        self._cached_creds: Credentials | None = None
        self._fetch = fetch
        self._clock = clock
        self._lock = threading.Lock()          # guards the fields below
        self._fetch_lock = threading.Lock()    # one token fetch at a time: no thundering herd
        self._creds_lock = threading.Lock()    # one credential lookup (helper run) at a time
        self._scheme: str | None = None        # learnt from the first challenge
        self._bearer: dict | None = None       # realm/service of the bearer challenge
        self._tokens: dict[tuple[str, ...], tuple[str, float]] = {}
        self._extra: dict[tuple[str, ...], tuple[str, ...]] = {}   # scopes the challenge added
        self.token_fetches = 0

    def __repr__(self) -> str:
        return f"Authenticator(registry={self.registry!r}, scheme={self._scheme!r})"

    def header(self, scopes: tuple[str, ...]) -> dict[str, str]:
        """The Authorization header to send for a request needing ``scopes`` ({} if anonymous so far)."""
        with self._lock:
            scheme, bearer = self._scheme, self._bearer
        if scheme == "basic" and self._creds is not None:
            return {"Authorization": "Basic " + self._basic_value()}
        if scheme == "bearer" and bearer is not None:
            return {"Authorization": "Bearer " + self._token(scopes, bearer)}
        return {}

    def unauthorized(self, response: requests.Response, scopes: tuple[str, ...], sent: dict) -> None:
        """Learn from a 401: drop a rejected token, remember the challenge.

        Raises AuthError when retrying cannot help (basic auth without credentials,
        or credentials already sent and refused).
        """
        ch = parse_challenge(response.headers.get("WWW-Authenticate", ""))
        sent_auth = sent.get("Authorization", "")
        if ch is None or ch.scheme not in ("basic", "bearer"):
            raise AuthError("unauthorized and no usable WWW-Authenticate challenge",
                            registry=self.registry, status=response.status_code)
        if ch.scheme == "basic":
            if self._creds is None:
                raise AuthError("registry requires basic auth and no credentials are configured",
                                registry=self.registry, status=response.status_code)
            if sent_auth.startswith("Basic "):
                raise AuthError("credentials rejected", registry=self.registry,
                                status=response.status_code)
            with self._lock:
                self._scheme = "basic"
            return
        realm = ch.params.get("realm")
        if not realm or urlsplit(realm).scheme not in ("http", "https"):
            raise AuthError("bearer challenge without a valid realm", registry=self.registry,
                            status=response.status_code)
        with self._lock:
            self._scheme = "bearer"
            self._bearer = {"realm": realm, "service": ch.params.get("service")}
            if sent_auth.startswith("Bearer "):
                key = self._key(scopes)
                cached = self._tokens.get(key)
                if cached is not None and cached[0] == sent_auth[7:]:
                    del self._tokens[key]
            # the registry may name a scope we did not think of; ask for it too for these scopes.
            extra = tuple(s for s in ch.params.get("scope", "").split(" ") if s and s not in scopes)
            if extra:
                self._extra[self._key(scopes)] = extra

    # -- internals --------------------------------------------------------------------------------

    @property
    def _creds(self) -> Credentials | None:
        if not self._loaded:
            with self._creds_lock:
                if not self._loaded:
                    try:
                        self._cached_creds = self._source()
                    except CredentialsError as e:
                        raise AuthError(str(e), registry=self.registry) from None
                    self._loaded = True
        return self._cached_creds

    def _basic_value(self) -> str:
        assert self._creds is not None
        raw = f"{self._creds.username}:{self._creds.password}".encode()
        return base64.b64encode(raw).decode()

    def _key(self, scopes: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(sorted(set(scopes)))

    def _valid(self, key: tuple[str, ...]) -> str | None:
        cached = self._tokens.get(key)
        if cached is not None and self._clock() < cached[1]:
            return cached[0]
        return None

    def _token(self, scopes: tuple[str, ...], bearer: dict) -> str:
        key = self._key(scopes)
        with self._lock:
            tok = self._valid(key)
        if tok is not None:
            return tok
        with self._fetch_lock:
            with self._lock:
                tok = self._valid(key)
            if tok is not None:
                return tok
            with self._lock:
                ask = tuple(sorted(set(key) | set(self._extra.get(key, ()))))
            tok, lifetime = self._request_token(ask, bearer)
            margin = min(MAX_REFRESH_MARGIN, lifetime * 0.1)
            with self._lock:
                self._tokens[key] = (tok, self._clock() + lifetime - margin)
            return tok

    def _request_token(self, scopes: tuple[str, ...], bearer: dict) -> tuple[str, float]:
        realm = bearer["realm"]
        params: list[tuple[str, str]] = []
        if bearer.get("service"):
            params.append(("service", bearer["service"]))
        params += [("scope", s) for s in scopes]
        realm_host = urlsplit(realm).netloc
        with self._lock:
            self.token_fetches += 1
        try:
            if self._creds is not None and self._creds.identity_token:
                form = dict(params)
                form.update(grant_type="refresh_token", refresh_token=self._creds.password,
                            client_id=CLIENT_ID)
                form["scope"] = " ".join(scopes)
                r = self._fetch("POST", realm, data=form)
            else:
                headers = {}
                if self._creds is not None:
                    headers["Authorization"] = "Basic " + self._basic_value()
                    params.append(("account", self._creds.username))
                r = self._fetch("GET", realm, params=params, headers=headers)
        except requests.RequestException as e:
            raise AuthError(f"token endpoint {realm_host} unreachable: {type(e).__name__}",
                            registry=self.registry) from None
        if r.status_code in (401, 403):
            raise AuthError(f"token endpoint {realm_host} refused the credentials",
                            registry=self.registry, status=r.status_code)
        if r.status_code != 200:
            raise AuthError(f"token endpoint {realm_host} failed", registry=self.registry,
                            status=r.status_code)
        try:
            doc = r.json()
            tok = doc.get("token") or doc.get("access_token")
            lifetime = float(doc["expires_in"]) if doc.get("expires_in") is not None \
                else DEFAULT_TOKEN_LIFETIME
        except (ValueError, AttributeError, TypeError):
            raise AuthError(f"token endpoint {realm_host} sent an unparsable answer",
                            registry=self.registry, status=r.status_code) from None
        if not isinstance(tok, str) or not tok:
            raise AuthError(f"token endpoint {realm_host} sent no token", registry=self.registry,
                            status=r.status_code)
        log.debug("got a bearer token for %s scopes %s (lifetime %.0fs)", self.registry, scopes, lifetime)
        return tok, max(lifetime, 0.0)
