"""`imgconv inspect`: what a converted image holds, from its bootstraps only.

Only the bootstraps are fetched (one range per layer, or footer + range),
never the data, so inspecting a multi-GB image in a registry costs a few KB.
"""
from __future__ import annotations

from typing import Any

from converter.image import open_image
from converter.imgview import load_layers
from converter.location import Location

PREFETCH_SHOWN = 20


def inspect_image(location: Location, platform: str | None, registry_opts: dict[str, Any]) -> dict:
    img = open_image(location, platform, **registry_opts)
    try:
        layers = load_layers(img)
        out = []
        for i, la in enumerate(layers):
            bs = la.bootstrap
            chunks = [bs.chunk(c) for c in range(bs.chunk_count)]
            comp = sum(c.comp_size for c in chunks)
            uncomp = sum(c.uncomp_size for c in chunks)
            prefetch = bs.prefetch
            pre_bytes = sum(chunks[c].comp_size for c in prefetch if 0 <= c < len(chunks))
            out.append({
                "index": i, "digest": la.layer.digest, "media_type": la.layer.media_type,
                "blob_size": la.layer.size, "bootstrap_digest": la.digest,
                "bootstrap_offset": la.offset, "bootstrap_size": la.size,
                "chunk_size": bs.chunk_size, "files": bs.file_count, "inodes": bs.inode_count,
                "chunks": bs.chunk_count, "chunk_bytes_compressed": comp, "chunk_bytes_uncompressed": uncomp,
                "compression_ratio": round(uncomp / comp, 3) if comp else None,
                "blobs": bs.blobs, "prefetch_chunks": len(prefetch), "prefetch_bytes_compressed": pre_bytes,
                "prefetch_table": prefetch[:PREFETCH_SHOWN],
                "diff_id": la.layer.annotations.get("containerd.io/snapshot/imgfs.uncompressed-digest"),
            })
        total_c = sum(x["chunk_bytes_compressed"] for x in out)
        total_u = sum(x["chunk_bytes_uncompressed"] for x in out)
        return {"image": str(location), "manifest_digest": img.manifest_digest,
                "config_digest": img.config_digest, "layers": out,
                "files": sum(x["files"] for x in out), "chunks": sum(x["chunks"] for x in out),
                "blob_bytes": sum(x["blob_size"] for x in out), "uncompressed_bytes": total_u,
                "compression_ratio": round(total_u / total_c, 3) if total_c else None}
    finally:
        img.close()


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB" if n >= 100_000 else f"{n} B"


def render(report: dict) -> str:
    lines = [f"image     {report['image']}", f"manifest  {report['manifest_digest']}",
             (f"layers    {len(report['layers'])}, files {report['files']}, chunks {report['chunks']}, "
             f"{_mb(report['blob_bytes'])} stored, {_mb(report['uncompressed_bytes'])} uncompressed, "
             f"ratio {report['compression_ratio']}"), ""]
    lines.append(f"{'#':>2}  {'digest':<19} {'blob':>10} {'files':>7} {'chunks':>7} {'ratio':>6} "
                 f"{'bootstrap':>10} {'prefetch':>17}")
    for x in report["layers"]:
        lines.append(f"{x['index']:>2}  {x['digest'][:19]:<19} {_mb(x['blob_size']):>10} {x['files']:>7} "
                     f"{x['chunks']:>7} {x['compression_ratio'] or '-':>6} {_mb(x['bootstrap_size']):>10} "
                     f"{x['prefetch_chunks']:>6} ch {_mb(x['prefetch_bytes_compressed']):>8}")
    for x in report["layers"]:
        if x["prefetch_table"]:
            more = " ..." if x["prefetch_chunks"] > len(x["prefetch_table"]) else ""
            lines.append(f"prefetch layer {x['index']}: chunks {x['prefetch_table']}{more}")
    return "\n".join(lines)
