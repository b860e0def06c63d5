"""Which labels say a Prepare is an imgfs layer, and what they tell.

containerd passes a layer's `containerd.io/snapshot/*` annotations as snapshot
labels (snapshots.FilterInheritedLabels), so the imgfs.* annotations imgconv writes
arrive on every pull. The image reference and the layer list come from a handler
wrapper of the client: CRI and `ctr-remote image rpull` add the cri.* labels
(containerd's pkg/snapshotters); stargz's own names are accepted as well. Plain
`ctr images pull` adds neither, so its layers are unpacked plainly (and logged).
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
    layers: tuple[str, ...]    # all layer digests of the image, bottom first ("" when unknown)
    bootstrap_digest: str
    bootstrap_offset: int
    bootstrap_size: int

    @property
    def index(self) -> int:
        """Position of this layer in the image (-1 when the layer list is unknown)."""
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
