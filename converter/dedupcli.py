"""imgconv's dedup commands (issue 7): `chunkdict build`, `inspect --dedup-report`, and the
--dedup / --chunk-dict options of `convert`. Kept apart from converter/cli.py, which only wires
them in."""
from __future__ import annotations

import argparse
import json
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

from converter.errors import UsageError
from converter.image import open_image
from converter.imgview import load_layers, merged_view, walk
from converter.location import parse_location


def add_commands(sub: Any, registry_flags: Callable[[argparse.ArgumentParser], None]) -> None:
    p = sub.add_parser("chunkdict", help="chunk dictionaries for `convert --chunk-dict`")
    cs = p.add_subparsers(dest="chunkdict_command", required=True)
    b = cs.add_parser("build", help="collect the chunks that recur in several converted images")
    b.add_argument("images", nargs="+", metavar="IMAGE", help="converted images (docker://, oci:)")
    b.add_argument("-o", "--output", type=Path, required=True, help="dictionary file to write")
    b.add_argument("--min-images", type=int, default=None,
                   help="keep chunks found in at least N images (default 2; 1 for a single image)")
    b.add_argument("--json", action="store_true")
    registry_flags(b)
    b.set_defaults(func=_cmd_build)


def _cmd_build(args: argparse.Namespace) -> int:
    from converter.cli import registry_opts
    from converter.dedupconv import build_dict

    for i in args.images:
        parse_location(i)           # usage errors before any network
    d = build_dict(args.images, args.min_images, registry_opts(args))
    d.save(args.output)
    summary = {"output": str(args.output), "images": d.images, "chunks": len(d),
               "blobs": len(d.blobs), "chunk_bytes_compressed": d.stored_bytes()}
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(f"{args.output}: {len(d)} chunks ({d.stored_bytes() / 1e6:.1f} MB) in {len(d.blobs)} blobs "
              f"of {len(d.images)} images")
    return 0


def dedup_options(args: argparse.Namespace, opts: Any, registry_opts: dict[str, Any]) -> None:
    """Fill ConvertOptions.dedup / chunk_dict from the command line (loads the dictionaries)."""
    from converter.dedupconv import load_chunk_dicts

    if args.all_platforms:
        raise UsageError("--dedup / --chunk-dict work on one platform: use --platform, not --all-platforms")
    opts.dedup = bool(args.dedup)
    if args.chunk_dict:
        opts.chunk_dict = load_chunk_dicts(args.chunk_dict, registry_opts)


def image_summary(location: str, platform: str | None, registry_opts: dict[str, Any]) -> Any:
    """dedup.report.ImageSummary of one converted image, from its bootstraps only."""
    from dedup.report import ImageSummary

    img = open_image(parse_location(location), platform, **registry_opts)
    try:
        layers = load_layers(img)
        out = ImageSummary(location)
        for la in layers:
            out.layers[la.layer.digest] = la.layer.size
            bs = la.bootstrap
            for i in range(bs.chunk_count):
                info = bs.chunk(i)
                out.add_chunk(info.digest, info.comp_size, info.uncomp_size)
        view = merged_view(layers)
        for _path, ino, attr in walk(view):
            if stat.S_ISREG(attr.mode):
                segs = view.segments(ino, 0, attr.size) if attr.size else []
                out.add_file(((info.digest, seg.offset_in_chunk, seg.length) for _b, seg, info in segs),
                             attr.size)
        return out
    finally:
        img.close()


def cmd_dedup_report(args: argparse.Namespace, registry_opts: dict[str, Any]) -> int:
    from dedup.report import render, report

    for i in args.image:
        parse_location(i)
    rep = report([image_summary(i, args.platform, registry_opts) for i in args.image])
    print(json.dumps(rep, indent=2) if args.json else render(rep))
    return 0
