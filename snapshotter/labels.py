"""Which labels say a Prepare is an imgfs layer, and what they tell.

containerd passes a layer's `containerd.io/snapshot/*` annotations as snapshot
labels (snapshots.FilterInheritedLabels), so the imgfs.* annotations imgconv writes
arrive on every pull. The image reference and the layer list come from a handler
wrapper of the client: CRI adds the cri.* labels (containerd's pkg/snapshotters),
`ctr-remote image rpull` stargz's own names, which are accepted as well. Plain
`ctr images pull` adds neither, so its layers are unpacked plainly (and logged).

The layer list (cri.image-layers, stargz.layers) is NOT the image's layers: both
handlers write the layers from this one up to the top, bottom first (seen through
CRI in tests/cri: the bottom layer of a two-layer image gets "L1,L2", the top "L2"),
cut to fit a label's 4 KiB. So it tells whether a layer is the top (a list of one),
not where it sits in the image: the manifest says that.
"""
from __future__ import annotations

from dataclasses import dataclass

from imgformat import constants as C

TARGET = "containerd.io/snapshot.ref"
CRI_IMAGE_REF = "containerd.io/snapshot/cri.image-ref"
CRI_MANIFEST = "containerd.io/snapshot/cri.manifest-digest"
CRI_LAYER = "containerd.io/snapshot/cri.layer-digest"
CRI_LAYERS = "containerd.io/snapshot/cri.image-layers"
STARGZ_REF = "containerd.io/snapshot/remote/stargz.reference"
STARGZ_DIGEST = "containerd.io/snapshot/remote/stargz.digest"
STARGZ_LAYERS = "containerd.io/snapshot/remote/stargz.layers"


class NotImgfs(Exception):
    """The labels do not describe a usable imgfs layer; the message says why (for the log)."""


@dataclass(frozen=True)
class LayerLabels:
    target: str
    image_ref: str             # e.g. 127.0.0.1:5000/debian:imgfs
    manifest_digest: str       # "" when the client did not say
    layer_digest: str
    layers: tuple[str, ...]    # this layer and those above it, bottom first (() when unknown)
    bootstrap_digest: str
    bootstrap_offset: int
    bootstrap_size: int

    @property
    def index(self) -> int:
        """Position of this layer in `layers` (-1 when not listed). With containerd's own labels
        that list starts at this layer, so this is 0, not a position in the image (module doc)."""
        return self.layers.index(self.layer_digest) if self.layer_digest in self.layers else -1


def parse(labels: dict[str, str]) -> LayerLabels:
    """The imgfs layer the labels describe; NotImgfs (with the reason) otherwise."""
    target = labels.get(TARGET, "")
    if not target:
        raise NotImgfs(f"no {TARGET} label: not a layer being pulled")
    if C.ANNOTATION_BOOTSTRAP_DIGEST not in labels:
        raise NotImgfs(f"no {C.ANNOTATION_BOOTSTRAP_DIGEST} label: a plain OCI layer")
    ref = labels.get(CRI_IMAGE_REF) or labels.get(STARGZ_REF, "")
    layer = labels.get(CRI_LAYER) or labels.get(STARGZ_DIGEST, "")
    if not ref or not layer:
        raise NotImgfs(f"an imgfs layer, but the client passed no {CRI_IMAGE_REF} / {CRI_LAYER} labels "
                       "(use `ctr-remote image rpull`, CRI, or a client that adds them)")
    version = labels.get(C.ANNOTATION_VERSION, C.FORMAT_VERSION)
    if version != C.FORMAT_VERSION:
        raise NotImgfs(f"imgfs format version {version!r} is not supported (want {C.FORMAT_VERSION})")
    try:
        offset = int(labels[C.ANNOTATION_BOOTSTRAP_OFFSET])
        size = int(labels[C.ANNOTATION_BOOTSTRAP_SIZE])
    except (KeyError, ValueError) as e:
        raise NotImgfs(f"imgfs bootstrap offset/size labels missing or malformed: {e}") from None
    if offset < 0 or size <= 0:
        raise NotImgfs(f"imgfs bootstrap range [{offset}, +{size}) is invalid")
    layers = labels.get(CRI_LAYERS) or labels.get(STARGZ_LAYERS, "")
    return LayerLabels(target=target, image_ref=ref, manifest_digest=labels.get(CRI_MANIFEST, ""),
                       layer_digest=layer, layers=tuple(x for x in layers.split(",") if x),
                       bootstrap_digest=labels[C.ANNOTATION_BOOTSTRAP_DIGEST],
                       bootstrap_offset=offset, bootstrap_size=size)
