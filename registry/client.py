"""RegistryClient: the OCI distribution API as the rest of imgfs uses it (see docs/internals.md).

Synchronous and thread-safe: one client per registry, shared by all threads
(fusefs calls it from its fetch workers). Every byte handed out is checked:
manifests and blobs against their digest, ranges against Content-Range.
"""
from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass
from typing import BinaryIO, Self

from registry.auth import Authenticator
from registry.blobio import BlobReader
from registry.credentials import Credentials, CredentialsError, CredentialSource, docker_credential_source
from registry.digests import digest_of, sha256_digest
from registry.errors import (
    AuthError,
    DigestMismatch,
    InvalidManifest,
    NotFound,
    PlatformNotFound,
    RangeError,
    RegistryError,
)
from registry.manifest import (
    ACCEPT,
    DEFAULT_PLATFORM,
    IMAGE_MANIFEST_TYPES,
    MAX_MANIFEST_SIZE,
    Manifest,
    ManifestError,
    parse_manifest,
    select_platform,
)
from registry.rangefetch import RangeBody, RangeReader
from registry.reference import (
    InvalidReference,
    Reference,
    parse_reference,
    validate_digest,
    validate_repository,
)
from registry.transport import Transport, TransportStatistics
from registry.upload import Source, Uploader, source_size, verify_source

__all__ = [
    "AuthError",
    "ClientStatistics",
    "DigestMismatch",
    "InvalidManifest",
    "Manifest",
    "NotFound",
    "PlatformNotFound",
    "RangeError",
    "RegistryClient",
    "RegistryError",
]

log = logging.getLogger(__name__)

DEFAULT_UPLOAD_CHUNK = 16 << 20    # blobs above this go up in PATCH chunks of this size


@dataclass(frozen=True)
class ClientStatistics:
    """Cheap counters for metrics: HTTP requests (all attempts), retries, bytes of blob data received."""

    requests: int
    retries: int
    auth_rounds: int
    token_fetches: int
    blob_bytes: int
    range_requests: int
    multirange_fallbacks: int


class RegistryClient:
    """Client for one registry (host[:port]); see docs/internals.md for the contract.

    Credentials: ``username``/``password`` if given, else ``auth_file`` (a docker
    config.json the user named, e.g. ``--authfile``: it must exist), else the docker
    config (``docker_config`` path, default ``$DOCKER_CONFIG/config.json`` or
    ``~/.docker/config.json``), else anonymous. They never appear in repr,
    logs or exceptions.
    """

    def __init__(self, registry: str, plain_http: bool = False, insecure: bool = False,
                 username: str | None = None, password: str | None = None,
                 docker_config: str | os.PathLike | None = None,
                 auth_file: str | os.PathLike | None = None, timeout: float = 30.0,
                 retries: int = 4, backoff: float = 0.2, *, pool_size: int = 32,
                 proxies: dict | None = None, upload_chunk_size: int = DEFAULT_UPLOAD_CHUNK):
        if not registry or "/" in registry:
            raise InvalidReference(f"invalid registry host {registry!r}")
        self.registry = registry
        if username is not None:
            # "<token>" as the user name means an identity (refresh) token, as from docker's helpers
            creds: Credentials | None | CredentialSource = Credentials(
                username, password or "", identity_token=username == "<token>")
        else:
            try:
                if auth_file:
                    creds = docker_credential_source(registry, auth_file, required=True)
                else:
                    creds = docker_credential_source(registry, docker_config)
            except CredentialsError as e:
                raise AuthError(str(e), registry=registry) from None
        self.upload_chunk_size = max(1, int(upload_chunk_size))
        self._t = Transport(registry, plain_http=plain_http, insecure=insecure, credentials=creds,
                            timeout=timeout, retries=retries, backoff=backoff, pool_size=pool_size,
                            proxies=proxies)
        self._lock = threading.Lock()
        self._blob_bytes = 0
        self._ranges = RangeReader(self._t, self._get_blob_response, self._count_bytes)

    @classmethod
    def from_ref(cls, ref: str | Reference, **opts) -> RegistryClient:
        """A client for the registry named by ``ref`` (options as for the constructor)."""
        if isinstance(ref, str):
            ref = parse_reference(ref)
        return cls(ref.registry, **opts)

    def __repr__(self) -> str:
        return f"RegistryClient({self._t.base_url!r})"

    def close(self) -> None:
        self._t.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def auth(self) -> Authenticator:
        return self._t.auth

    def statistics(self) -> ClientStatistics:
        t: TransportStatistics = self._t.statistics()
        range_requests, fallbacks = self._ranges.counters()
        with self._lock:
            return ClientStatistics(t.requests, t.retries, t.auth_rounds, t.token_fetches,
                                    self._blob_bytes, range_requests, fallbacks)

    def _count_bytes(self, n: int) -> None:
        with self._lock:
            self._blob_bytes += n

    @staticmethod
    def _pull(repo: str) -> tuple[str, ...]:
        return (f"repository:{validate_repository(repo)}:pull",)

    @staticmethod
    def _where(repo: str, digest: str | None = None) -> dict:
        return {"repository": repo, "digest": digest}

    def _ctx(self, repo: str, digest: str | None = None) -> dict:
        return {"registry": self.registry, "repository": repo, "digest": digest}

    # -- manifests ---------------------------------------------------------------------------------

    def get_manifest(self, repo: str, tag_or_digest: str) -> Manifest:
        """Fetch one manifest or index by tag or digest, verified against the digest asked for.

        By tag, the returned digest is computed from the bytes (and must agree with
        Docker-Content-Digest when the registry sends one).
        """
        by_digest = ":" in tag_or_digest
        if by_digest:
            validate_digest(tag_or_digest)
        r = self._t.request("GET", f"/v2/{repo}/manifests/{tag_or_digest}", scopes=self._pull(repo),
                            expect=(200,), headers={"Accept": ACCEPT}, stream=True,
                            **self._where(repo, tag_or_digest if by_digest else None))
        try:
            length = r.headers.get("Content-Length")
            if length and length.isdigit() and int(length) > MAX_MANIFEST_SIZE:
                raise RegistryError(f"manifest of {length} bytes exceeds the {MAX_MANIFEST_SIZE} limit",
                                    **self._ctx(repo))
            data = r.raw.read(MAX_MANIFEST_SIZE + 1, decode_content=True)
        finally:
            r.close()
        if len(data) > MAX_MANIFEST_SIZE:
            raise RegistryError(f"manifest exceeds the {MAX_MANIFEST_SIZE} byte limit", **self._ctx(repo))
        if by_digest:
            got = digest_of(data, tag_or_digest)
            if got != tag_or_digest:
                raise DigestMismatch(f"manifest content hashes to {got}", **self._ctx(repo, tag_or_digest))
            digest = tag_or_digest
        else:
            digest = sha256_digest(data)
            header = r.headers.get("Docker-Content-Digest")
            if header and header.startswith("sha256:") and header != digest:
                raise DigestMismatch(f"manifest of tag {tag_or_digest} hashes to {digest}, registry says "
                                     f"{header}", **self._ctx(repo, header))
        try:
            return parse_manifest(data, r.headers.get("Content-Type"), digest)
        except ManifestError as e:
            raise InvalidManifest(str(e), **self._ctx(repo, digest)) from None

    def manifest_digest(self, repo: str, tag_or_digest: str) -> str:
        """The digest a tag points to, from a HEAD request (no body; falls back to GET if the
        registry sends no Docker-Content-Digest)."""
        r = self._t.request("HEAD", f"/v2/{repo}/manifests/{tag_or_digest}", scopes=self._pull(repo),
                            expect=(200,), headers={"Accept": ACCEPT}, **self._where(repo))
        r.close()
        header = r.headers.get("Docker-Content-Digest")
        if header:
            validate_digest(header)
            return header
        return self.get_manifest(repo, tag_or_digest).digest

    def resolve(self, ref: str | Reference, platform: str = DEFAULT_PLATFORM) -> Manifest:
        """The image manifest for ``ref``, following an index/manifest list to ``platform``.

        Raises PlatformNotFound when the index has no such platform.
        """
        if isinstance(ref, str):
            ref = parse_reference(ref)
        if ref.registry != self.registry:
            raise InvalidReference(f"reference {ref} is not on registry {self.registry}")
        m = self.get_manifest(ref.repository, ref.reference)
        if m.is_index:
            try:
                desc = select_platform(m, platform)
            except ManifestError as e:
                raise PlatformNotFound(str(e), **self._ctx(ref.repository, m.digest)) from None
            digest = desc.get("digest")
            if not isinstance(digest, str):
                raise InvalidManifest("index entry without a digest", **self._ctx(ref.repository, m.digest))
            m = self.get_manifest(ref.repository, digest)
        if m.media_type not in IMAGE_MANIFEST_TYPES:
            raise InvalidManifest(f"{ref} resolves to {m.media_type}, not an image manifest",
                                **self._ctx(ref.repository, m.digest))
        return m

    def push_manifest(self, repo: str, tag_or_digest: str, data: bytes, media_type: str) -> str:
        """Upload a manifest under a tag or its digest; returns its sha256 digest."""
        digest = sha256_digest(data)
        if ":" in tag_or_digest and digest_of(data, tag_or_digest) != tag_or_digest:
            raise DigestMismatch(f"refusing to push: manifest hashes to {digest}",
                                 **self._ctx(repo, tag_or_digest))
        r = self._t.request("PUT", f"/v2/{repo}/manifests/{tag_or_digest}",
                            scopes=(f"repository:{validate_repository(repo)}:pull,push",), expect=(201, 200),
                            headers={"Content-Type": media_type}, body=bytes(data), **self._where(repo, digest))
        r.close()
        header = r.headers.get("Docker-Content-Digest")
        if header and header.startswith("sha256:") and header != digest:
            raise DigestMismatch(f"registry stored the manifest as {header}", **self._ctx(repo, digest))
        return digest

    def delete_manifest(self, repo: str, digest: str) -> None:
        """Delete a manifest by digest (the registry must have deletion enabled)."""
        validate_digest(digest)
        r = self._t.request("DELETE", f"/v2/{repo}/manifests/{digest}",
                            scopes=(f"repository:{validate_repository(repo)}:delete",),
                            expect=(202, 200, 204), **self._where(repo, digest))
        r.close()

    def list_tags(self, repo: str) -> list[str]:
        """All tags of ``repo`` (follows Link pagination)."""
        tags: list[str] = []
        url: str | None = f"/v2/{repo}/tags/list"
        while url:
            r = self._t.request("GET", url, scopes=self._pull(repo), expect=(200,), **self._where(repo))
            try:
                tags += r.json().get("tags") or []
            except ValueError:
                raise RegistryError("unparsable tag list", **self._ctx(repo)) from None
            url = r.links.get("next", {}).get("url")
        return tags

    # -- blobs -------------------------------------------------------------------------------------

    def blob_exists(self, repo: str, digest: str) -> int | None:
        """The blob's size if ``repo`` has it, else None."""
        validate_digest(digest)
        try:
            r = self._t.request("HEAD", f"/v2/{repo}/blobs/{digest}", scopes=self._pull(repo),
                                expect=(200,), **self._where(repo, digest))
        except NotFound:
            return None
        r.close()
        length = r.headers.get("Content-Length")
        return int(length) if length and length.isdigit() else 0

    def _get_blob_response(self, repo: str, digest: str, headers: dict | None = None):
        hdrs = {"Accept-Encoding": "identity"}
        hdrs.update(headers or {})
        return self._t.request("GET", f"/v2/{repo}/blobs/{digest}", scopes=self._pull(repo),
                               expect=(200, 206, 416), headers=hdrs, stream=True,
                               **self._where(repo, digest))

    def open_blob(self, repo: str, digest: str) -> BinaryIO:
        """Stream a blob; the digest is verified at EOF (DigestMismatch from the read that hits it)."""
        validate_digest(digest)

        def open_at(offset: int):
            r = self._get_blob_response(repo, digest, {"Range": f"bytes={offset}-"} if offset else None)
            if r.status_code == 416 or (r.status_code == 206 and not offset):
                r.close()
                raise RegistryError(f"unexpected HTTP {r.status_code} for a blob read at {offset}",
                                    status=r.status_code, **self._ctx(repo, digest))
            return r

        reader = BlobReader(open_at, digest, registry=self.registry, repository=repo,
                            resumes=self._t.retries, on_bytes=self._count_bytes)
        return reader  # type: ignore[return-value]

    def get_blob(self, repo: str, digest: str) -> bytes:
        """A whole blob in memory, verified (for configs and other small blobs)."""
        with self.open_blob(repo, digest) as f:
            return f.read()

    def push_blob(self, repo: str, digest: str, source: Source, size: int | None = None,
                  mount_from: str | None = None) -> None:
        """Upload a blob unless ``repo`` already has it; try a cross-repo mount from ``mount_from`` first.

        ``source`` is bytes or a file path. Bytes are checked against ``digest``
        before upload; a file's digest is checked by the registry (DigestMismatch).
        """
        validate_digest(digest)
        validate_repository(repo)
        if mount_from is not None:
            validate_repository(mount_from)
        actual = source_size(source)
        if size is not None and size != actual:
            raise RegistryError(f"source has {actual} bytes, caller said {size}", **self._ctx(repo, digest))
        if isinstance(source, bytes | bytearray | memoryview):
            verify_source(source, digest)
        if self.blob_exists(repo, digest) is not None:
            log.debug("blob %s already in %s, skipping upload", digest, repo)
            return
        Uploader(self._t, repo, digest, source, actual, self.upload_chunk_size, mount_from).run()

    # -- ranges ------------------------------------------------------------------------------------

    def get_range(self, repo: str, digest: str, start: int, end: int) -> bytes:
        """Bytes ``[start, end)`` of a blob. Raises RangeError if the blob is shorter than ``end``."""
        return self.get_ranges(repo, digest, [(start, end)])[0]

    def open_range(self, repo: str, digest: str, start: int, end: int) -> RangeBody:
        """Bytes ``[start, end)`` of a blob as they arrive: ``body.read(n)`` gives exactly ``n``
        bytes or raises RegistryError (broken or short body; not resumed). Close the body.

        For callers that use a large range piece by piece while it streams in (fusefs's
        prefetch verifies and serves each chunk as soon as its bytes are in).
        """
        validate_digest(digest)
        validate_repository(repo)
        return self._ranges.open_range(repo, digest, start, end)

    def get_ranges(self, repo: str, digest: str, ranges: list[tuple[int, int]]) -> list[bytes]:
        """Bytes of each ``[start, end)`` in ``ranges`` (any order, overlaps allowed), in that order.

        Overlapping/adjacent ranges are merged; up to ``MAX_RANGES_PER_REQUEST`` spans
        go in one multi-range request. If the registry refuses multi-range (400/416/
        501) or ignores it, the spans are fetched as one covering range and sliced
        here, and the client stops asking for multi-range.
        """
        validate_digest(digest)
        validate_repository(repo)
        return self._ranges.get_ranges(repo, digest, ranges)
