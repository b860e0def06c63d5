"""Skip-pull: an imgfs layer being pulled is verified by its bootstrap alone and recorded as
committed, so containerd downloads nothing.

containerd asks the snapshotter to Prepare each layer of a pull with labels naming the layer
(snapshotter.labels). For an imgfs layer, this fetches the image manifest (once per pull),
checks that the layer is one of its imgfs layers (the bottom of the image: plain layers may
sit above them), fetches the layer's bootstrap with one range request, checks its sha256
against the annotation and its structure, and leaves it in the node's bootstrap cache for
the fusefs daemon. The record it returns says which image's mount the layer is the top of
(``tops``). Whatever goes wrong is a plain unpack, logged at WARNING with the reason.
"""
from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable

from snapshotter import labels as lb
from snapshotter.config import Config
from snapshotter.keychain import Keychain
from snapshotter.store import Snapshot, Store

log = logging.getLogger("imgfs.snapshotter")

TAG_TTL = 60.0    # seconds a resolved tag is trusted: one pull's layers ask within a few seconds


def image_key(image: dict) -> str:
    """The key of an image's mount: manifest, plus how many bottom layers when not all."""
    key = f"{image['registry']}/{image['repository']}@{image['manifest']}"
    return f"{key}#{image['layers']}" if image.get("layers") else key


def imgfs_prefix(layers: list[dict]) -> int:
    """How many of a manifest's layers, from the bottom, are imgfs layers. Plain layers may sit
    above them (an image built FROM an imgfs image), not below or between: fusefs mounts the
    imgfs layers as one merged tree at the bottom of the chain."""
    from imgformat import constants as C

    imgfs = [C.ANNOTATION_BOOTSTRAP_DIGEST in (d.get("annotations") or {}) for d in layers]
    count = imgfs.index(False) if False in imgfs else len(imgfs)
    if any(imgfs[count:]):
        raise ValueError(f"the image has imgfs layers above plain layer {count} "
                         f"({layers[count].get('digest')}): fusefs serves imgfs layers only below all "
                         "plain ones")
    return count


class SkipPull:
    """Verifies imgfs layers of a pull; ``mount_early(image)`` is called once a pull's first
    imgfs layer is verified, when ``mount_on_pull`` is set."""

    def __init__(self, cfg: Config, store: Store, mount_early: Callable[[dict], None],
                 keychain: Keychain | None = None) -> None:
        self.cfg = cfg
        self.store = store
        self.mount_early = mount_early
        self.keychain = keychain or Keychain()
        self._manifests: dict[tuple[str, str, str], dict] = {}  # (registry, repo, digest) -> json
        self._tags: dict[str, tuple[float, str]] = {}         # reference -> (when, manifest digest)

    def _client(self, host: str, repository: str):
        from registry.client import RegistryClient

        r = self.cfg.registry
        learnt = self.keychain.get(host, repository)    # a CRI pull's own credentials come first
        who = ({"username": learnt.username, "password": learnt.password} if learnt
               else {"auth_file": r.credentials or None})
        return RegistryClient(registry=host, plain_http=host in r.plain_http, insecure=host in r.insecure,
                              timeout=r.timeout, retries=r.retries, **who)

    def try_prepare(self, key: str, parent: str, labels: dict[str, str]) -> dict | None:
        try:
            info = lb.parse(labels)
        except lb.NotImgfs as e:
            from imgformat import constants as C

            if C.ANNOTATION_BOOTSTRAP_DIGEST in labels:
                log.warning("FALLBACK to plain unpack of %s: %s", labels.get(lb.TARGET), e)
            else:
                log.info("plain layer %s: containerd unpacks it", labels.get(lb.TARGET))
            return None
        try:
            return self._verify(info)
        except Exception as e:  # noqa: BLE001 - any failure means: unpack it plainly, loudly
            log.warning("FALLBACK to plain unpack of imgfs layer %s of %s: %s: %s", info.layer_digest,
                        info.image_ref, type(e).__name__, e)
            return None

    def _verify(self, info: lb.LayerLabels) -> dict:
        from fusefs.bootcache import BootstrapCache
        from imgformat.bootstrap import Bootstrap
        from registry.reference import parse_reference

        ref = parse_reference(info.image_ref)
        client = self._client(ref.registry, ref.repository)
        mdigest, manifest = self._manifest(client, ref, info.manifest_digest)
        layers = manifest.get("layers") or []
        digests = [d.get("digest") for d in layers]
        if info.layer_digest not in digests:
            raise ValueError(f"layer {info.layer_digest} is not in manifest {mdigest}")
        count = imgfs_prefix(layers)
        if digests.index(info.layer_digest) >= count:
            raise ValueError(f"layer {info.layer_digest} has imgfs labels but no imgfs annotations "
                             f"in manifest {mdigest}")
        image = self._image(ref, mdigest, info.image_ref, count, len(layers))
        start = info.bootstrap_offset
        payload = client.get_range(ref.repository, info.layer_digest, start, start + info.bootstrap_size)
        got = "sha256:" + hashlib.sha256(payload).hexdigest()
        if got != info.bootstrap_digest:
            raise ValueError(f"bootstrap digest mismatch: annotation {info.bootstrap_digest}, fetched {got}")
        # Decoding checks the structure too (header, tables): a layer fusefs could not mount is
        # better unpacked plainly now than failing at container start.
        Bootstrap.from_blob_bytes(payload, blob_digest=info.layer_digest)
        # the daemon that mounts the image reads it from there instead of fetching it again
        BootstrapCache(self.cfg.cache).put(info.bootstrap_digest, payload)
        if self.cfg.mount_on_pull:
            # at the pull's first verified layer (one start per image): in parallel with the
            # other layers' checks, whose bootstraps the daemon waits for in the cache
            self.mount_early(image)
        index = digests.index(info.layer_digest)
        log.info("imgfs layer %d/%d %s of %s verified (bootstrap %d bytes, one range request)",
                 index + 1, len(digests), info.layer_digest, info.image_ref, len(payload))
        return {"layer_digest": info.layer_digest, "index": index, "count": len(digests),
                "bootstrap_digest": info.bootstrap_digest,
                "tops": [image] if index == count - 1 else []}

    @staticmethod
    def _image(ref, mdigest: str, ref_text: str, count: int, total: int) -> dict:
        """The mount record of an image: all its layers, or its bottom ``count`` imgfs layers
        when plain layers sit above them (containerd unpacks those onto this mount)."""
        image = {"registry": ref.registry, "repository": ref.repository, "manifest": mdigest,
                 "ref": ref_text}
        if count < total:
            image["layers"] = count
        return image

    def _manifest(self, client, ref, digest: str) -> tuple[str, dict]:
        """The image manifest, once per pull: by digest when the client passed it (CRI), else the
        tag resolved at most once per TAG_TTL seconds (ctr-remote passes only the reference)."""
        now = time.monotonic()
        if not digest:
            hit = self._tags.get(str(ref))
            if hit and now - hit[0] < TAG_TTL:
                digest = hit[1]
        if digest and (ref.registry, ref.repository, digest) in self._manifests:
            return digest, self._manifests[(ref.registry, ref.repository, digest)]
        m = client.get_manifest(ref.repository, digest) if digest else client.resolve(ref)
        if len(self._manifests) > 256:      # bounded: only the pulls in flight need these
            self._manifests.clear()
            self._tags.clear()
        self._manifests[(ref.registry, ref.repository, m.digest)] = m.json
        self._tags[str(ref)] = (now, m.digest)
        return m.digest, m.json

    def note_existing(self, snap: Snapshot, labels: dict[str, str]) -> None:
        """A pull found its layer already there: remember the image if this layer is its top."""
        if not snap.remote:
            return
        try:
            info = lb.parse(labels)
        except lb.NotImgfs:
            return
        from registry.reference import parse_reference

        try:
            ref = parse_reference(info.image_ref)
            mdigest, manifest = self._manifest(self._client(ref.registry, ref.repository), ref, info.manifest_digest)
        except Exception as e:  # noqa: BLE001 - only a hint for later mounts; the layer is there
            log.warning("cannot resolve %s to record it for layer %s: %s", info.image_ref, snap.key, e)
            return
        layers = manifest.get("layers") or []
        try:
            count = imgfs_prefix(layers)
        except ValueError:
            return
        if not count or layers[count - 1].get("digest") != info.layer_digest:
            return
        image = self._image(ref, mdigest, info.image_ref, count, len(layers))
        tops = snap.remote.get("tops", [])
        if all(image_key(t) != image_key(image) for t in tops):
            self.store.set_remote(snap.key, {**snap.remote, "tops": [*tops, image]})
            log.info("layer %s is also the top of %s", snap.key, info.image_ref)
