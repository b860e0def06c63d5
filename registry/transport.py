"""HTTP transport for one registry: pooled session, auth, retries, error mapping.

One ``requests.Session`` per client with an ``HTTPAdapter`` whose pool holds
``pool_size`` connections per host (fusefs reads from many worker threads at once;
requests' default of 10 would make the 11th wait for or churn connections).
urllib3's own retries are off: this module retries, because it must also retry
on 5xx/429 answers and re-authenticate on 401, which urllib3 cannot.

Retry policy (like s3ql's ``is_temp_failure``): connection errors, timeouts,
truncated bodies, HTTP 408, 429 and 5xx except 501/505 are temporary and retried
``retries`` times with exponential backoff (``backoff * 2**n``, jittered to
50-100% so that many threads do not retry in lock-step, capped at
MAX_BACKOFF); a 429/503 Retry-After is honoured up to MAX_RETRY_AFTER. 401 is
not a failure but an auth round (at most AUTH_ROUNDS per request).

``trust_env`` is off so that ~/.netrc can never inject an Authorization header
(requests applies it over ours, and re-applies it after redirects); proxies from
the environment are still honoured for the registry's URL.
"""
from __future__ import annotations

import email.utils
import json
import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urljoin, urlsplit

import requests
import requests.adapters
import urllib3

from registry.auth import Authenticator
from registry.credentials import Credentials, CredentialSource
from registry.errors import AuthError, NotFound, RegistryError, sanitize

log = logging.getLogger(__name__)

MAX_BACKOFF = 10.0        # seconds; a retry later than this rarely helps an interactive read
MAX_RETRY_AFTER = 60.0    # seconds; honour a registry's rate limit up to a minute
AUTH_ROUNDS = 2           # learn the challenge, then refresh a rejected token once
DEFAULT_POOL_SIZE = 32    # connections per host; fusefs runs up to 16 fetch workers + prefetch
USER_AGENT = "imgfs-registry/0.1"

TEMPORARY_STATUS = frozenset({408, 429, 500, 502, 503, 504, 507, 509, 520, 521, 522, 523, 524})
TEMPORARY_EXCEPTIONS = (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError)

Body = bytes | Callable[[], Any] | None


@dataclass(frozen=True)
class TransportStatistics:
    requests: int
    retries: int
    auth_rounds: int
    token_fetches: int


def _path(url: str) -> str:
    return urlsplit(url).path or "/"


def _error_code(resp: requests.Response) -> tuple[str | None, str]:
    """The first ``errors[].code``/``message`` of a registry error body, if it has one.

    Reads at most 64 KiB: an error page must not cost a download.
    """
    try:
        body = next(resp.iter_content(65536), b"")
        errs = json.loads(body).get("errors") or []
        first = errs[0]
        return str(first.get("code") or "") or None, str(first.get("message") or "")[:200]
    except (ValueError, AttributeError, IndexError, TypeError, requests.RequestException):
        return None, ""


def reason(e: BaseException) -> str:
    """A short, secret-free description of a requests exception: its innermost cause, no URL query."""
    inner: object = e
    while True:
        arg = inner.args[0] if isinstance(inner, BaseException) and inner.args else None
        nxt = getattr(arg, "reason", None) or getattr(inner, "reason", None)
        if nxt is None or nxt is inner or isinstance(nxt, str):
            break
        inner = nxt
    text = str(inner) if inner is not e else str(e)
    return f"{type(e).__name__}: {sanitize(text)[:300]}"


def retry_after(resp: requests.Response) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or HTTP-date), or None."""
    value = resp.headers.get("Retry-After")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


class Transport:
    """Requests against one registry with auth and retries; thread-safe."""

    def __init__(self, registry: str, *, plain_http: bool, insecure: bool,
                 credentials: Credentials | None | CredentialSource, timeout: float, retries: int, backoff: float,
                 pool_size: int = DEFAULT_POOL_SIZE, proxies: dict | None = None,
                 sleep: Callable[[float], None] = time.sleep, clock: Callable[[], float] = time.monotonic):
        self.registry = registry
        endpoint = "registry-1.docker.io" if registry == "docker.io" else registry
        self.base_url = f"{'http' if plain_http else 'https'}://{endpoint}"
        self.timeout = timeout
        self.retries = max(0, int(retries))
        self.backoff = max(0.0, float(backoff))
        self._sleep = sleep
        s = requests.Session()
        s.trust_env = False
        s.verify = not insecure
        if insecure:
            # asked for explicitly (like docker's insecure-registries): say it once, not per request
            log.warning("TLS certificate verification disabled for registry %s", registry)
            urllib3.disable_warnings(urllib3.exceptions.InsecureRequestWarning)
        s.proxies = dict(proxies) if proxies is not None else requests.utils.get_environ_proxies(self.base_url)
        s.headers["User-Agent"] = USER_AGENT
        adapter = requests.adapters.HTTPAdapter(pool_connections=4, pool_maxsize=max(16, pool_size),
                                                max_retries=0)
        s.mount("http://", adapter)
        s.mount("https://", adapter)
        self.session = s
        self.auth = Authenticator(registry, credentials, self._plain_fetch, clock=clock)
        self._lock = threading.Lock()
        self._requests = self._retries = self._auth_rounds = 0

    def __repr__(self) -> str:
        return f"Transport({self.base_url!r})"

    def close(self) -> None:
        self.session.close()

    def url(self, path_or_url: str) -> str:
        """Absolute URL for a ``/v2/...`` path or an upload Location (absolute or relative)."""
        return urljoin(self.base_url + "/", path_or_url)

    def statistics(self) -> TransportStatistics:
        with self._lock:
            return TransportStatistics(self._requests, self._retries, self._auth_rounds,
                                       self.auth.token_fetches)

    def _count(self, requests_: int = 0, retries: int = 0, auth: int = 0) -> None:
        with self._lock:
            self._requests += requests_
            self._retries += retries
            self._auth_rounds += auth

    def pause(self, attempt: int, resp: requests.Response | None = None) -> None:
        """Sleep before retry number ``attempt + 1`` (exponential, jittered, Retry-After honoured)."""
        delay = min(MAX_BACKOFF, self.backoff * (2 ** attempt)) * random.uniform(0.5, 1.0)
        if resp is not None:
            ra = retry_after(resp)
            if ra is not None:
                delay = max(delay, min(ra, MAX_RETRY_AFTER))
        self._count(retries=1)
        if delay > 0:
            self._sleep(delay)

    def _plain_fetch(self, method: str, url: str, **kw: Any) -> requests.Response:
        """A request with retries on temporary failures but no auth handling (token endpoint)."""
        for attempt in range(self.retries + 1):
            self._count(requests_=1)
            try:
                resp = self.session.request(method, url, timeout=self.timeout, **kw)
            except TEMPORARY_EXCEPTIONS as e:
                if attempt >= self.retries or isinstance(e, requests.exceptions.SSLError):
                    raise
                self.pause(attempt)
                continue
            if resp.status_code in TEMPORARY_STATUS and attempt < self.retries:
                resp.close()
                self.pause(attempt, resp)
                continue
            return resp
        raise AssertionError("unreachable")

    def request(self, method: str, url: str, *, scopes: tuple[str, ...], expect: tuple[int, ...],
                repository: str | None = None, digest: str | None = None, headers: dict | None = None,
                body: Body = None, params: Any = None, stream: bool = False,
                retry: bool = True) -> requests.Response:
        """Send a request, authenticate and retry as needed; return a response whose status is in expect.

        ``url`` is a ``/v2/...`` path or an absolute URL. ``body`` is bytes or a
        zero-argument callable giving a fresh body per attempt (a file to stream).
        ``retry=False`` disables retries on temporary failures (for requests that
        are not safe to repeat, like an upload PATCH).

        Raises:
            NotFound: 404. AuthError: 401 after auth rounds, 403, or credentials problems.
            RegistryError: any other status not in ``expect``, or a temporary failure
                that outlasted the retries.
        """
        full = self.url(url)
        ctx = {"registry": self.registry, "repository": repository, "digest": digest}
        attempts = self.retries + 1 if retry else 1
        attempt = auth_rounds = 0
        while True:
            hdrs = dict(headers or {})
            hdrs.update(self.auth.header(scopes))
            data = body() if callable(body) else body
            self._count(requests_=1)
            try:
                resp = self.session.request(method, full, headers=hdrs, data=data, params=params,
                                            stream=stream, timeout=self.timeout)
            except TEMPORARY_EXCEPTIONS as e:
                attempt += 1
                if attempt >= attempts or isinstance(e, requests.exceptions.SSLError):  # TLS: not temporary
                    raise RegistryError(f"{method} {_path(full)} failed after {attempt} attempt(s): "
                                        f"{reason(e)}", **ctx) from None
                log.debug("%s %s: %s, retrying", method, _path(full), type(e).__name__)
                self.pause(attempt - 1)
                continue
            except requests.RequestException as e:
                raise RegistryError(f"{method} {_path(full)} failed: {reason(e)}", **ctx) from None
            finally:
                if hasattr(data, "close"):
                    data.close()
            status = resp.status_code
            log.debug("%s %s -> %d", method, _path(full), status)
            if status in expect:
                return resp
            if status == 401 and auth_rounds < AUTH_ROUNDS:
                auth_rounds += 1
                self._count(auth=1)
                resp.close()
                self.auth.unauthorized(resp, scopes, hdrs)
                continue
            if status in TEMPORARY_STATUS and attempt + 1 < attempts:
                attempt += 1
                log.debug("%s %s -> %d, retrying", method, _path(full), status)
                resp.close()
                self.pause(attempt - 1, resp)
                continue
            raise self.error(resp, method, full, **ctx)

    def error(self, resp: requests.Response, method: str, url: str, **ctx: Any) -> RegistryError:
        """The exception for an unexpected response (consumes and closes it)."""
        code, message = _error_code(resp)
        resp.close()
        status = resp.status_code
        text = f"{method} {_path(url)}" + (f": {message}" if message else "")
        if status == 404:
            return NotFound(text, status=status, code=code, **ctx)
        if status in (401, 403):
            return AuthError(text or "unauthorized", status=status, code=code, **ctx)
        return RegistryError(text, status=status, code=code, **ctx)
