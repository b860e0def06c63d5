"""registry: the OCI distribution client every other imgfs package uses.

Public surface (contract in docs/internals.md):

- ``registry.reference``: ``Reference``, ``parse_reference`` (``host[:port]/repo[:tag][@digest]``).
- ``registry.client``: ``RegistryClient`` (manifests, platform resolution, blobs
  streamed and verified, single/multi-range reads with fallbacks, push with
  chunked upload and cross-repo mount, delete) and the errors ``RegistryError``,
  ``NotFound``, ``AuthError``, ``DigestMismatch`` (plus ``RangeError``,
  ``PlatformNotFound``, ``InvalidManifest``). Malformed references and digests
  passed in by the caller raise ``registry.reference.InvalidReference`` (a ValueError).
- ``registry.manifest``: media type constants, ``Manifest``.

Modules, one job each: ``transport`` (pooled session, auth rounds, retries),
``auth`` (challenges, bearer tokens), ``credentials`` (flags, docker config,
credential helpers), ``ranges`` (Range/Content-Range/multipart), ``blobio``
(verifying, resuming blob stream), ``upload`` (mount/monolithic/chunked push),
``manifest``, ``digests``, ``errors``.

Beyond docs/internals.md (additive): ``RegistryClient.from_ref``, ``manifest_digest``
(HEAD tag -> digest), ``list_tags``, ``statistics()`` (requests, retries, token
fetches, blob bytes, range requests, multi-range fallbacks: for fusefs metrics),
keyword-only ``pool_size``, ``proxies``, ``upload_chunk_size``.

Why requests directly and not oras (oras-py 0.2.43 is pinned and was read):
oras-py's ``Registry`` pushes and pulls whole artifacts to and from files. It
has no Range or multi-range reads, no digest verification while streaming, no
resume, no platform selection in indexes, no cross-repo mount. Its ``@retry``
decorator retries only HTTP 500 and exceptions, sleeps ``2 + 3**n`` seconds
(no Retry-After, no 429/502/503 handling) and would repeat a PATCH, which is not
safe. Its session has requests' default pool of 10 connections and its token
auth keeps one mutable token without locking, so threads would race. Its
helpers that looked reusable do not fit either: ``oras.auth.utils.load_configs``
always adds ``~/.docker/config.json`` to the paths given (the config path is not
really injectable, which tests need) and only returns ``credHelpers`` for the
caller to run; ``parse_auth_header`` drops the scheme (Basic vs Bearer) and does
not handle escaped quotes. So this package is written on requests, following
the distribution spec and its token auth spec; oras is not imported here.
"""
from registry.client import RegistryClient as RegistryClient
from registry.errors import AuthError as AuthError
from registry.errors import DigestMismatch as DigestMismatch
from registry.errors import InvalidManifest as InvalidManifest
from registry.errors import NotFound as NotFound
from registry.errors import PlatformNotFound as PlatformNotFound
from registry.errors import RangeError as RangeError
from registry.errors import RegistryError as RegistryError
from registry.manifest import Manifest as Manifest
from registry.reference import Reference as Reference
from registry.reference import parse_reference as parse_reference
