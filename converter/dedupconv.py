"""Chunk dedup in `imgconv convert` (--dedup, --chunk-dict) and `imgconv chunkdict build`.

--dedup (within one image): layers are converted bottom-up, one at a time, and each layer gets the
chunks of the layers below it as its dictionary, so a chunk already stored lower is not stored
again (its bootstrap points into the lower blob, which the same manifest lists anyway).

--chunk-dict REF|FILE (across images): the dictionary's chunks are not stored again either; the
blobs they live in must then be reachable from the new image's repository and survive registry
garbage collection although the image manifest does not list them (listing them as layers would
change the rootfs). So, before the image itself is published: each such blob is cross-repo mounted
(same registry) or copied into the destination, and a *references manifest* listing them as its
layers, with `subject` = the new image manifest, is pushed under the tag
`sha256-<image manifest hex>.imgfs-refs`. Registry GC keeps every blob a tagged manifest names,
so v2 survives the deletion of v1 + GC (docs/dedup.md argues the choice and its limits). An OCI
layout destination gets the blobs copied in (a layout has no GC).
"""
from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from converter.errors import BadInput, UsageError
from converter.image import Layer, SourceImage, canonical_json, open_image
from converter.imgview import load_layers
from converter.location import Location, parse_location
from converter.sinks import Blob
from converter.sources import OCI_MANIFEST, RegistrySource, registry_client, sha256_digest
from converter.streams import READ_SIZE, DigestReader
from dedup.chunkdict import ChunkDict, ChunkDictError, DictBlob, from_layers, image_chunks, recurring

log = logging.getLogger("imgconv.dedup")

REFS_TAG_SUFFIX = ".imgfs-refs"
REFS_ARTIFACT_TYPE = "application/vnd.imgfs.chunk-refs.v1"
EMPTY_CONFIG = b"{}"
EMPTY_CONFIG_TYPE = "application/vnd.oci.empty.v1+json"


def refs_tag(manifest_digest: str) -> str:
    """The tag of an image's references manifest (cosign-style: derived from the digest)."""
    return "sha256-" + manifest_digest.split(":", 1)[1] + REFS_TAG_SUFFIX


# -- dictionaries --------------------------------------------------------------------------------

def image_dict(location: str, registry_opts: dict[str, Any]) -> ChunkDict:
    """Every chunk of one converted image (bootstraps only)."""
    img = open_image(parse_location(location), None, **registry_opts)
    try:
        d = from_layers(load_layers(img), location)
        for digest in d.unsized_blobs():          # blobs a dedup'd image points into
            size = _blob_size(img, digest)
            if size is None:
                raise BadInput(f"{location}: its chunks point into blob {digest}, which it does not hold")
            try:
                d.set_blob_size(digest, size)
            except ChunkDictError as e:
                raise BadInput(f"{location}: {e}") from None
        return d
    finally:
        img.close()


def _blob_size(img: SourceImage, digest: str) -> int | None:
    src = img.source
    if isinstance(src, RegistrySource):
        return src.client.blob_exists(src.repo, digest)
    try:
        return os.stat(Path(src.location.path) / "blobs" / "sha256" / digest.split(":", 1)[1]).st_size
    except (OSError, TypeError):
        return None


def load_chunk_dicts(specs: list[str], registry_opts: dict[str, Any]) -> ChunkDict:
    """--chunk-dict values: a dictionary file, or an image location (all its chunks)."""
    out = ChunkDict()
    for spec in specs:
        if os.path.isfile(spec):
            try:
                out.merge(ChunkDict.load(spec))
            except ChunkDictError as e:
                raise BadInput(str(e)) from None
        elif spec.startswith(("docker://", "oci:")):
            out.merge(image_dict(spec, registry_opts))
        else:
            raise UsageError(f"--chunk-dict {spec!r}: neither a file nor docker://... / oci:... image")
    return out


def build_dict(images: list[str], min_images: int | None, registry_opts: dict[str, Any]) -> ChunkDict:
    """`imgconv chunkdict build`: chunks recurring in >= min_images images (default: 2 when given
    several images, else 1)."""
    if min_images is None:
        min_images = 2 if len(images) > 1 else 1
    if not 1 <= min_images <= len(images):
        raise UsageError(f"--min-images must be in 1..{len(images)}")
    return recurring([image_dict(i, registry_opts) for i in images], min_images)


# -- conversion ----------------------------------------------------------------------------------

def _bootstrap_of(path: Path, digest: str) -> Any:
    from imgformat.bootstrap import Bootstrap
    from imgformat.footer import FOOTER_SIZE, parse_footer_full

    with open(path, "rb") as f:
        f.seek(-FOOTER_SIZE, os.SEEK_END)
        offset, size, raw = parse_footer_full(f.read(FOOTER_SIZE))
        f.seek(offset)
        payload = f.read(size)
    return Bootstrap.from_blob_bytes(payload, digest="sha256:" + raw.hex(), blob_digest=digest)


@dataclass
class _Lower:
    layer: Layer
    bootstrap: Any


def _reuse_layer(img: SourceImage, index: int, base: ChunkDict, work: Path) -> Any:
    """A _Done for a source layer whose diff_id the dictionary has converted already, or None.

    The blob is not fetched: its file here is a sparse placeholder of the right size, which the
    registry sink never reads because prepare_publish mounts the blob into the repository first
    (an OCI layout destination gets the real bytes from prepare_publish instead)."""
    from converter.convert import LayerSummary, _Done
    from imgformat import constants as C

    diff_id = img.diff_ids[index]
    desc = base.layers.get(diff_id) if diff_id else None
    if desc is None:
        return None
    ann = desc.get("annotations") or {}
    layer = img.layers[index]
    placeholder = work / ("reused-" + desc["digest"].split(":", 1)[1])
    with open(placeholder, "wb") as f:
        f.truncate(int(desc["size"]))
    summary = LayerSummary(
        source_digest=layer.digest, source_size=layer.size, source_media_type=layer.media_type,
        compression="reused", target_digest=desc["digest"], target_size=int(desc["size"]),
        diff_id=ann.get(C.ANNOTATION_UNCOMPRESSED, diff_id), source_diff_id=diff_id,
        bootstrap_digest=ann.get(C.ANNOTATION_BOOTSTRAP_DIGEST, ""),
        bootstrap_offset=int(ann.get(C.ANNOTATION_BOOTSTRAP_OFFSET, 0)),
        bootstrap_size=int(ann.get(C.ANNOTATION_BOOTSTRAP_SIZE, 0)), files=0, chunks=0,
        uncompressed_size=0, seconds=0.0, reused_from=base.blobs[desc["digest"]].image)
    log.info("layer %d (%s): reusing %s from %s", index, layer.digest, desc["digest"], summary.reused_from)
    return _Done(summary, placeholder, dict(desc))


def convert_layers_dedup(images: list[SourceImage], base: ChunkDict | None, within: bool,
                         convert_one: Callable[..., Any], work: Path, reuse: bool = True) -> dict[str, Any]:
    """Convert each image's layers bottom-up, one at a time; layer i's dictionary is ``base`` plus
    (with ``within``) the chunks of the converted layers below it. ``convert_one(img, i, chunk_dict)``
    converts one layer and returns converter.convert._Done. A layer whose diff_id ``base`` knows
    (converted before: same content) is reused whole, unless ``reuse`` is off (a prefetch list
    asks for a new layout). Returns source digest -> _Done.

    The source layer is not read at all when reused: its diff_id comes from the config, which
    the blob's own pinned annotations in the dictionary image were made for; `imgconv check`
    compares the rootfs end to end."""
    done: dict[str, Any] = {}
    for img in images:
        current = ChunkDict()
        if base is not None:
            current.merge(base)
        for i, layer in enumerate(img.layers):
            d = done.get(layer.digest)
            if d is None and base is not None and reuse:
                d = _reuse_layer(img, i, base, work)
            if d is None:
                d = convert_one(img, i, current if len(current) else None)
            done[layer.digest] = d
            if within and d.summary.reused_from is None:
                s = d.summary
                lower = _Lower(Layer(s.target_digest, s.target_size, d.descriptor["mediaType"]),
                               _bootstrap_of(d.path, s.target_digest))
                for digest, chunk, blob in image_chunks([lower], "(this image)"):
                    current.add(digest, chunk, blob)
    return done


def foreign_blobs(layer_results: list[Any], chunk_dict: ChunkDict | None) -> list[DictBlob]:
    """Blobs the converted layers point into that are not layers of the same image."""
    if chunk_dict is None:
        return []
    own = {d.summary.target_digest for d in layer_results if d.summary.reused_from is None}
    used = sorted(({b for d in layer_results for b in d.summary.external_blobs}
                   | {d.summary.target_digest for d in layer_results}) - own)
    missing = [b for b in used if b not in chunk_dict.blobs]
    if missing:
        raise BadInput(f"converted layers point into blobs the dictionary does not name: {missing}")
    return [chunk_dict.blobs[b] for b in used]


def refs_manifest(image_manifest: bytes, blobs: list[DictBlob]) -> bytes:
    """The references manifest: layers = the foreign blobs, subject = the image manifest."""
    doc = {
        "schemaVersion": 2, "mediaType": OCI_MANIFEST, "artifactType": REFS_ARTIFACT_TYPE,
        "config": {"mediaType": EMPTY_CONFIG_TYPE, "digest": sha256_digest(EMPTY_CONFIG),
                   "size": len(EMPTY_CONFIG)},
        "layers": [{"mediaType": b.media_type, "digest": b.digest, "size": b.size} for b in blobs],
        "subject": {"mediaType": OCI_MANIFEST, "digest": sha256_digest(image_manifest),
                    "size": len(image_manifest)},
        "annotations": {"org.opencontainers.image.description":
                        "imgfs: blobs this image's chunks point into (keeps them from registry GC)"},
    }
    return canonical_json(doc)


def _download(blob: DictBlob, work: Path, registry_opts: dict[str, Any]) -> Path:
    path = work / ("foreign-" + blob.digest.split(":", 1)[1])
    if path.exists():
        return path
    img = open_image(parse_location(blob.image), None, **registry_opts)
    try:
        tmp = path.with_suffix(".part")
        with DigestReader(img.open_blob(blob.digest), blob.digest, f"blob {blob.digest}") as src, \
                open(tmp, "wb") as out:
            while piece := src.read(READ_SIZE):
                out.write(piece)
        os.replace(tmp, path)
    finally:
        img.close()
    return path


def _mount_or_copy(client: Any, dst: Location, blob: DictBlob, work: Path,
                   registry_opts: dict[str, Any]) -> None:
    from registry.client import RegistryError

    size = client.blob_exists(dst.repo, blob.digest)
    if size is not None:
        return
    src = parse_location(blob.image)
    if src.kind == "docker" and src.host == dst.host:
        # a cross-repo mount needs no data; the placeholder is read only if the registry refuses
        # the mount (then the upload fails its digest check and we copy for real below)
        placeholder = work / f"mount-{threading.get_ident()}-{blob.digest[7:19]}"
        with open(placeholder, "wb") as f:
            f.truncate(blob.size)
        try:
            client.push_blob(dst.repo, blob.digest, placeholder, size=blob.size, mount_from=src.repo)
            return
        except RegistryError as e:
            log.info("mount of %s from %s refused (%s); copying", blob.digest, src.repo, e)
        finally:
            placeholder.unlink(missing_ok=True)
    client.push_blob(dst.repo, blob.digest, _download(blob, work, registry_opts))


def prepare_publish(dst: Location, blobs: list[DictBlob], image_manifest: bytes | None,
                    work: Path, registry_opts: dict[str, Any]) -> list[Blob]:
    """Make foreign blobs reachable at ``dst`` before the image is published.

    Registry: mount/copy them into the repository and push the references manifest (tagged) now,
    so there is no moment where the image is visible and its blobs are collectable. OCI layout:
    returns them as Blobs for the sink to copy in. Nothing to do without foreign blobs."""
    if not blobs:
        return []
    if dst.kind != "docker":
        return [Blob(b.digest, b.size, path=_download(b, work, registry_opts)) for b in blobs]
    if image_manifest is None:
        raise UsageError("--chunk-dict with several platforms is not supported; pick one with --platform")
    client = registry_client(dst.host, **registry_opts)
    try:
        for b in blobs:
            _mount_or_copy(client, dst, b, work, registry_opts)
        client.push_blob(dst.repo, sha256_digest(EMPTY_CONFIG), EMPTY_CONFIG)
        data = refs_manifest(image_manifest, blobs)
        client.push_manifest(dst.repo, refs_tag(sha256_digest(image_manifest)), data, OCI_MANIFEST)
    finally:
        close = getattr(client, "close", None)
        if close is not None:
            close()
    return []
