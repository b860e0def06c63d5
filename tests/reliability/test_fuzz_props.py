"""Property tests (hypothesis, derandomized so CI is deterministic) for the readers of
untrusted bytes: any mutation of a valid bootstrap or layer tar is answered or refused with
ImgFormatError, never another exception, and the reader terminates. The same targets run
coverage-guided under atheris via ``make fuzz`` (scripts/fuzz.sh, results in fuzz/results/).
FUZZ_EXAMPLES raises the example count for a long run by hand.
"""
from __future__ import annotations

import os

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fuzz import targets

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "1000"))
SETTINGS = settings(max_examples=EXAMPLES, derandomize=True, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def mutations(seed: bytes):
    """Byte flips, overwrites with boundary integers, truncations and splices of ``seed``."""
    edit = st.tuples(st.integers(0, max(len(seed) - 1, 0)),
                     st.sampled_from([b"\x00", b"\xff", b"\x7f", b"\x80", b"\xff\xff\xff\xff",
                                      b"\x00\x00\x00\x00", b"\x01\x00\x00\x00", b"\xff\xff\xff\x7f"]))

    @st.composite
    def mutate(draw):
        data = bytearray(seed)
        for pos, val in draw(st.lists(edit, min_size=1, max_size=8)):
            data[pos:pos + len(val)] = val
        if draw(st.booleans()):
            data = data[:draw(st.integers(0, len(data)))]
        return bytes(data)

    return st.one_of(mutate(), st.binary(max_size=512))


@SETTINGS
@given(mutations(targets.seed_bootstrap()))
def test_bootstrap_reader_never_crashes(data):
    targets.bootstrap_target(data)


@SETTINGS
@given(mutations(targets.seed_blob_bootstrap()))
def test_blob_bootstrap_reader_never_crashes(data):
    targets.blob_bootstrap_target(data)


@SETTINGS
@given(mutations(targets.seed_tar()))
def test_tar_reader_never_crashes(data):
    targets.tar_target(data)


def test_seeds_are_valid():
    """The mutations start from inputs that work (else the properties test nothing)."""
    from imgformat.bootstrap import Bootstrap

    assert targets.walk(Bootstrap(targets.seed_bootstrap())) >= 8
