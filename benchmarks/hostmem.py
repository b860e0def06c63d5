"""Keeping a VM's free-page reporting out of a benchmark's numbers.

Why: the VM these benchmarks run on reports every page the guest frees back to the host
at once (virtio-balloon free page reporting, ``page_reporting`` module parameter
``min_free_ms`` = 0), so the next page-cache page the guest allocates has to be backed
by the host again on first touch. Whether a read lands on such pages or on pages still
backed changes from minute to minute, and with it the cost of any page-cache fill: a
plain 1 GiB file read from disk measured 529, 1,833, 1,234 and 809 MB/s in four
consecutive rounds (guest system time 0.1 to 0.45 of the two vCPUs), which made a ratio
against it a lottery. With freed pages held for a minute before they are reported, the
same read measured 1,853, 1,856, 1,852 and 1,901 MB/s.

``held_free_pages()`` sets that hold for the duration of a benchmark and puts the old
value back afterwards. It changes nothing where the parameter does not exist (bare
metal, other hypervisors) or cannot be written (not root), and it says what it did so
that the results can record it. On a node without free page reporting there is nothing
to hold: the numbers there correspond to the held ones.
"""
from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path

log = logging.getLogger(__name__)

MIN_FREE_MS = Path("/sys/module/page_reporting/parameters/min_free_ms")
#: Long enough to span one benchmark round (a few seconds), short enough that the memory
#: a benchmark frees goes back to the host soon after it ends.
HOLD_MS = 60_000


@contextlib.contextmanager
def held_free_pages(knob: Path = MIN_FREE_MS, hold_ms: int = HOLD_MS) -> Iterator[dict]:
    """Hold freed guest pages ``hold_ms`` before they are reported to the host; yields a
    record for the results: ``{"free_page_reporting": "held 60000 ms (was 0)"}``, or why not."""
    try:
        old = knob.read_text().strip()
    except OSError:
        yield {"free_page_reporting": "not present (nothing held)"}
        return
    if old.isdigit() and int(old) >= hold_ms:
        yield {"free_page_reporting": f"already held {old} ms"}
        return
    try:
        knob.write_text(str(hold_ms))
    except OSError as exc:
        yield {"free_page_reporting": f"present (min_free_ms={old}) but not held: {exc}"}
        return
    try:
        yield {"free_page_reporting": f"held {hold_ms} ms during the run (was {old})"}
    finally:
        try:
            knob.write_text(old)
        except OSError as exc:      # the hold would outlive the benchmark: say so loudly
            log.error("could not restore %s to %s: %s", knob, old, exc)
