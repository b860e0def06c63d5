"""Which Prepare labels make an imgfs layer, and the reason logged when they do not."""
from __future__ import annotations

import pytest

from imgformat import constants as C
from snapshotter import labels as lb

BASE = {
    lb.TARGET: "sha256:chain",
    C.ANNOTATION_BOOTSTRAP_DIGEST: "sha256:" + "b" * 64,
    C.ANNOTATION_BOOTSTRAP_OFFSET: "100",
    C.ANNOTATION_BOOTSTRAP_SIZE: "50",
    C.ANNOTATION_VERSION: C.FORMAT_VERSION,
}


def test_cri_labels():
    # the shape CRI sends (tests/cri pins it): the layer list starts at this layer
    info = lb.parse({**BASE, lb.CRI_IMAGE_REF: "h:5000/r:t", lb.CRI_LAYER: "sha256:l1",
                     lb.CRI_MANIFEST: "sha256:m", lb.CRI_LAYERS: "sha256:l1,sha256:l2"})
    assert (info.image_ref, info.layer_digest, info.manifest_digest) == ("h:5000/r:t", "sha256:l1", "sha256:m")
    assert (info.bootstrap_offset, info.bootstrap_size, info.index) == (100, 50, 0)
    assert info.layers == ("sha256:l1", "sha256:l2")


def test_stargz_labels_of_ctr_remote():
    info = lb.parse({**BASE, lb.STARGZ_REF: "h/r:t", lb.STARGZ_DIGEST: "sha256:l1", lb.STARGZ_LAYERS: "sha256:l1"})
    assert (info.image_ref, info.manifest_digest, info.index) == ("h/r:t", "", 0)


@pytest.mark.parametrize("labels, reason", [
    ({}, "not a layer being pulled"),
    ({lb.TARGET: "x"}, "a plain OCI layer"),
    (BASE, "passed no"),
    ({**BASE, lb.STARGZ_REF: "h/r:t", lb.STARGZ_DIGEST: "d", C.ANNOTATION_VERSION: "9"}, "not supported"),
    ({**BASE, lb.STARGZ_REF: "h/r:t", lb.STARGZ_DIGEST: "d", C.ANNOTATION_BOOTSTRAP_SIZE: "x"}, "malformed"),
    ({**BASE, lb.STARGZ_REF: "h/r:t", lb.STARGZ_DIGEST: "d", C.ANNOTATION_BOOTSTRAP_SIZE: "0"}, "invalid"),
])
def test_not_imgfs_says_why(labels, reason):
    with pytest.raises(lb.NotImgfs, match=reason):
        lb.parse(labels)
