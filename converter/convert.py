"""`imgconv convert`: source image(s) -> imgfs image(s), layers in parallel.

Per layer, one worker thread streams: source blob -> digest check ->
decompress -> imgformat.convert_layer -> a blob file in the work dir. The CPU
work (zlib, zstd, sha256) runs in C with the GIL released, so threads keep
both cores busy; a process pool would have to ship gigabytes through pipes.
The first failing layer sets `cancel`, which makes the others stop at their
next read, and nothing is published. Publishing (sinks.py) happens only after
every layer of every platform converted and verified.

Determinism: output depends only on the input bytes and the options; layers
shared by several platforms are converted once.
"""
from __future__ import annotations

import os
import shutil
import tempfile
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from converter.budget import DEFAULT_MIN_FREE, LayerBudget
from converter.errors import BadInput
from converter.image import ImageSet, SourceImage, canonical_json, open_images
from converter.location import Location
from converter.progress import Progress
from converter.sinks import Blob, ManifestDoc, open_sink
from converter.sources import OCI_CONFIG, OCI_INDEX, OCI_MANIFEST, sha256_digest
from converter.streams import Cancelled


@dataclass
class ConvertOptions:
    chunk_size: int = 1 << 20
    level: int = 3
    prefetch: list | None = None          # imgformat PrefetchEntry list, applied to every layer
    workdir: Path | None = None
    jobs: int = 0                         # 0: one per core
    platform: str | None = None
    all_platforms: bool = False
    dedup: bool = False                   # chunks of lower layers not stored again (converter/dedupconv.py)
    chunk_dict: Any = None                # dedup.chunkdict.ChunkDict: chunks stored in other images
    max_layer_size: int | None = None     # uncompressed bytes per layer (converter/budget.py); None: no cap
    min_free: int = DEFAULT_MIN_FREE      # free space the work dir keeps while spooling


@dataclass
class LayerSummary:
    source_digest: str
    source_size: int
    source_media_type: str
    compression: str
    target_digest: str
    target_size: int
    diff_id: str
    source_diff_id: str
    bootstrap_digest: str
    bootstrap_offset: int
    bootstrap_size: int
    files: int
    chunks: int
    uncompressed_size: int
    seconds: float
    external_blobs: tuple[str, ...] = ()  # blobs this layer's chunks point into (dedup)
    external_chunks: int = 0
    external_bytes: int = 0
    reused_from: str | None = None        # --chunk-dict: converted blob of this diff_id reused whole


@dataclass
class ImageSummary:
    platform: dict | None
    manifest_digest: str
    config_digest: str
    layers: list[LayerSummary] = field(default_factory=list)


@dataclass
class _Done:
    summary: LayerSummary
    path: Path
    descriptor: dict


def _convert_one(img: SourceImage, index: int, opts: ConvertOptions, work: Path,
                 cancel: threading.Event, progress: Progress, chunk_dict: Any = None) -> _Done:
    """Convert layer `index` of `img` into a blob file in `work`; verify both source digests."""
    from imgformat import constants as C
    from imgformat.layer import FormatError, convert_layer

    t0 = time.monotonic()
    layer = img.layers[index]
    checker, tar = img.open_layer(index, cancel)
    task = progress.add(f"layer {index} {layer.digest[7:19]}", layer.size, lambda: checker.count)
    tmp = work / f"layer-{layer.digest[7:]}.tmp"
    try:
        with checker, open(tmp, "wb") as out:
            try:
                budget = LayerBudget(tar, f"layer {index} ({layer.digest})", work,
                                     max_size=opts.max_layer_size, min_free=opts.min_free)
                res = convert_layer(budget, out, chunk_size=opts.chunk_size,
                                    level=opts.level, prefetch=opts.prefetch, workdir=work,
                                    chunk_dict=chunk_dict)
            except FormatError as e:
                raise BadInput(f"layer {index} ({layer.digest}): {e}") from None
            source_diff_id = tar.finish()      # drain past the tar's end: verifies the stream
            checker.finish()
        expected = img.diff_ids[index]
        if expected is not None and source_diff_id != expected:
            raise BadInput(f"layer {index} ({layer.digest}): uncompressed digest {source_diff_id} does not "
                           f"match the config's diff_id {expected}")
        final = work / res.blob_digest.split(":", 1)[1]
        os.replace(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    finally:
        progress.done(task)
    summary = LayerSummary(
        source_digest=layer.digest, source_size=layer.size, source_media_type=layer.media_type,
        compression=tar.compression, target_digest=res.blob_digest, target_size=res.blob_size,
        diff_id=res.diff_id, source_diff_id=source_diff_id, bootstrap_digest=res.bootstrap_digest,
        bootstrap_offset=res.bootstrap_offset, bootstrap_size=res.bootstrap_size, files=res.files,
        chunks=res.chunks, uncompressed_size=res.uncompressed_size,
        seconds=round(time.monotonic() - t0, 3), external_blobs=res.external_blobs,
        external_chunks=res.external_chunks, external_bytes=res.external_bytes)
    descriptor = {
        "mediaType": C.LAYER_MEDIA_TYPE, "digest": res.blob_digest, "size": res.blob_size,
        "annotations": {
            C.ANNOTATION_BOOTSTRAP_DIGEST: res.bootstrap_digest,
            C.ANNOTATION_BOOTSTRAP_OFFSET: str(res.bootstrap_offset),
            C.ANNOTATION_BOOTSTRAP_SIZE: str(res.bootstrap_size),
            C.ANNOTATION_UNCOMPRESSED: res.diff_id,
            C.ANNOTATION_VERSION: str(C.FORMAT_VERSION),
            **({C.ANNOTATION_EXTERNAL_BLOBS: ",".join(res.external_blobs)} if res.external_blobs else {}),
            C.ANNOTATION_SOURCE_DIFF_ID: source_diff_id,
        },
    }
    return _Done(summary, final, descriptor)


def _convert_layers(images: list[SourceImage], opts: ConvertOptions, work: Path,
                    progress: Progress) -> dict[str, _Done]:
    """Convert every distinct layer (by source digest) in parallel; first error wins, by layer order."""
    cancel = threading.Event()
    if opts.dedup or opts.chunk_dict is not None:   # bottom-up, one layer at a time
        from converter.dedupconv import convert_layers_dedup
        return convert_layers_dedup(images, opts.chunk_dict, opts.dedup, lambda img, i, cd: _convert_one(
            img, i, opts, work, cancel, progress, cd), work, reuse=opts.prefetch is None)
    jobs = opts.jobs or os.cpu_count() or 2
    futures: dict[str, Future] = {}
    with ThreadPoolExecutor(max_workers=jobs, thread_name_prefix="imgconv-layer") as pool:
        for img in images:
            for i, layer in enumerate(img.layers):
                if layer.digest not in futures:
                    futures[layer.digest] = pool.submit(_convert_one, img, i, opts, work, cancel, progress)
        pending = set(futures.values())
        while pending:
            done, pending = wait(pending, timeout=0.2)
            progress.refresh()
            if any(f.exception() is not None for f in done):
                cancel.set()
    errors = [f.exception() for f in futures.values() if f.exception() is not None]
    real = [e for e in errors if not isinstance(e, Cancelled)]
    if real or errors:
        raise (real or errors)[0]
    return {d: f.result() for d, f in futures.items()}


def _build_image(img: SourceImage, done: dict[str, _Done]) -> tuple[ImageSummary, list[Blob], ManifestDoc]:
    layers = [done[layer.digest] for layer in img.layers]
    config = dict(img.config)
    rootfs = dict(config.get("rootfs") or {})
    rootfs["diff_ids"] = [d.summary.diff_id for d in layers]
    config["rootfs"] = rootfs
    cfg_bytes = canonical_json(config)
    cfg_digest = sha256_digest(cfg_bytes)
    manifest: dict[str, Any] = {
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": cfg_digest, "size": len(cfg_bytes)},
        "layers": [d.descriptor for d in layers],
    }
    if isinstance(img.manifest.get("annotations"), dict):
        manifest["annotations"] = img.manifest["annotations"]
    data = canonical_json(manifest)
    doc = ManifestDoc(sha256_digest(data), data, OCI_MANIFEST)
    blobs = [Blob(d.summary.target_digest, d.summary.target_size, path=d.path) for d in layers]
    blobs.append(Blob(cfg_digest, len(cfg_bytes), data=cfg_bytes))
    return ImageSummary(img.platform, doc.digest, cfg_digest, [d.summary for d in layers]), blobs, doc


def convert(src: Location, dst: Location, opts: ConvertOptions, registry_opts: dict[str, Any],
            show_progress: bool = False) -> dict:
    """Convert `src` to `dst`; returns the summary (as printed by --json)."""
    t0 = time.monotonic()
    imgset: ImageSet = open_images(src, opts.platform, opts.all_platforms, **registry_opts)
    base = opts.workdir
    if base is not None:
        base.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="imgconv-", dir=base))
    try:
        with Progress(show_progress) as progress:
            done = _convert_layers(imgset.images, opts, work, progress)
        summaries, blobs, docs = [], {}, []
        for img in imgset.images:
            summary, img_blobs, doc = _build_image(img, done)
            summaries.append(summary)
            blobs.update({b.digest: b for b in img_blobs})
            docs.append(doc)
        if opts.all_platforms and imgset.index is not None:
            entries = [{"mediaType": d.media_type, "digest": d.digest, "size": len(d.data),
                        **({"platform": img.platform} if img.platform else {})}
                       for d, img in zip(docs, imgset.images)]
            data = canonical_json({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries})
            root, subs = ManifestDoc(sha256_digest(data), data, OCI_INDEX), docs
        else:
            root, subs = docs[0], []
        if opts.chunk_dict is not None:   # blobs the chunks point into: reachable and GC-safe first
            from converter.dedupconv import foreign_blobs, prepare_publish
            extra = prepare_publish(dst, foreign_blobs(list(done.values()), opts.chunk_dict),
                                    docs[0].data if len(docs) == 1 else None, work, registry_opts)
            blobs.update({b.digest: b for b in extra})
        sink = open_sink(dst, **registry_opts)
        try:
            sink.publish(list(blobs.values()), subs, root)
        finally:
            sink.close()
    finally:
        imgset.close()
        shutil.rmtree(work, ignore_errors=True)
    seconds = time.monotonic() - t0
    uncompressed = sum(d.summary.uncompressed_size for d in done.values())
    return {
        "source": str(src), "destination": str(dst), "manifest_digest": root.digest,
        "media_type": root.media_type, "seconds": round(seconds, 3),
        "uncompressed_bytes": uncompressed,
        "source_bytes": sum(d.summary.source_size for d in done.values()),
        "target_bytes": sum(d.summary.target_size for d in done.values()),
        "throughput_mb_s": round(uncompressed / seconds / 1e6, 2) if seconds > 0 else None,
        "images": [asdict(s) for s in summaries],
    }
