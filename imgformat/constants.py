"""Constants of the imgfs on-disk format (the exact bytes are specified in docs/format.md).

Every number here is part of the format: changing one changes the bytes converters write, so it
comes with a version bump (``BOOTSTRAP_VERSION`` / ``FOOTER_VERSION``).
"""
from __future__ import annotations

# Layer descriptor annotations. Names live under containerd.io/snapshot/ so that containerd passes
# them to remote snapshotters as labels.
ANNOTATION_BOOTSTRAP_DIGEST = "containerd.io/snapshot/imgfs.bootstrap.digest"
ANNOTATION_BOOTSTRAP_OFFSET = "containerd.io/snapshot/imgfs.bootstrap.offset"
ANNOTATION_BOOTSTRAP_SIZE = "containerd.io/snapshot/imgfs.bootstrap.size"
ANNOTATION_VERSION = "containerd.io/snapshot/imgfs.version"
ANNOTATION_UNCOMPRESSED = "containerd.io/snapshot/imgfs.uncompressed-digest"
# Chunk dedup: comma-separated digests of other blobs this layer's chunks point into. Its presence
# also says: this blob alone is not a complete tar+zstd layer (docs/format.md section 5). Not under
# containerd.io/snapshot/ on purpose: containerd would copy it into a snapshot label, and labels
# are limited to 4096 bytes (57 digests); readers take the blobs from the bootstrap anyway.
ANNOTATION_EXTERNAL_BLOBS = "io.imgfs.external-blobs"
# The diff_id of the source layer this blob was converted from (provenance; lets a chunk dictionary
# reuse a whole converted layer when a later image has the same source layer).
ANNOTATION_SOURCE_DIFF_ID = "containerd.io/snapshot/imgfs.source-diff-id"

LAYER_MEDIA_TYPE = "application/vnd.oci.image.layer.v1.tar+zstd"
FORMAT_VERSION = "1"

# Chunking: 64 KiB .. 16 MiB, default 1 MiB (DESIGN.md). Files smaller than a quarter chunk are
# packed with their neighbours so one fetch serves many small files.
MIN_CHUNK_SIZE = 64 << 10
MAX_CHUNK_SIZE = 16 << 20
DEFAULT_CHUNK_SIZE = 1 << 20
SMALL_FILE_DIVISOR = 4
DEFAULT_LEVEL = 3

# Tar: 512-byte blocks. An entry's header blocks (PAX/GNU long-name headers included) may not
# exceed MAX_HEADER_SIZE: real xattrs are <= 64 KiB, so 1 MiB is generous and bounds memory.
BLOCK = 512
MAX_HEADER_SIZE = 1 << 20
MAX_NAME = 255  # NAME_MAX on Linux: a longer component cannot be created by any runtime.

# zstd skippable frames (RFC 8878 3.1.2): magic 0x184D2A50..0x184D2A5F, 4-byte LE size, payload.
SKIPPABLE_BOOTSTRAP_MAGIC = 0x184D2A5A
SKIPPABLE_FOOTER_MAGIC = 0x184D2A5B
SKIPPABLE_MAX_PAYLOAD = 0xFFFFFFFF

# Footer payload magic and version.
FOOTER_MAGIC = b"IMGFSFT1"
FOOTER_VERSION = 1
FOOTER_PAYLOAD_SIZE = 64
FOOTER_SIZE = 8 + FOOTER_PAYLOAD_SIZE

# Bootstrap.
BOOTSTRAP_MAGIC = b"IMGFSBS\x00"
BOOTSTRAP_VERSION = 1
DIGEST_SHA256 = 1
ROOT_INO = 1
# Upper bound on a decompressed bootstrap: ~100 bytes per file, so 1 GiB is ~10M files.
MAX_BOOTSTRAP_SIZE = 1 << 30

# Inode flags.
FLAG_WHITEOUT = 1  # this dirent hides the same name in lower layers (tar: .wh.NAME)
FLAG_OPAQUE = 2  # this directory hides the contents of lower layers (tar: .wh..wh..opq)
FLAG_IMPLICIT = 4  # directory not in the tar, created as a parent: lower layers' attributes win
KNOWN_FLAGS = FLAG_WHITEOUT | FLAG_OPAQUE | FLAG_IMPLICIT

WHITEOUT_PREFIX = b".wh."
OPAQUE_NAME = b".wh..wh..opq"


def max_frame_size(chunk_size: int) -> int:
    """Largest uncompressed chunk frame a writer may produce for ``chunk_size``.

    A pack of small files is flushed before it passes chunk_size, but a single record (header plus
    data of a file smaller than chunk_size/4) may overflow it once.
    """
    return chunk_size + chunk_size // SMALL_FILE_DIVISOR + MAX_HEADER_SIZE + 2 * BLOCK
