"""Coverage-guided fuzzing with atheris: ``python -m fuzz.run TARGET SECONDS CORPUS_DIR``.

TARGET is bootstrap, blob_bootstrap or tar (fuzz.targets). The corpus starts from the seed
(a valid input of that kind); a crash (any exception other than ImgFormatError) stops the
run, leaves ``crash-*`` in the current directory and exits non-zero: turn it into a test.
"""
from __future__ import annotations

import sys
from pathlib import Path

import atheris

with atheris.instrument_imports():
    from fuzz import targets

TARGETS = {"bootstrap": (targets.bootstrap_target, targets.seed_bootstrap),
           "blob_bootstrap": (targets.blob_bootstrap_target, targets.seed_blob_bootstrap),
           "tar": (targets.tar_target, targets.seed_tar)}


def main() -> None:
    name, seconds, corpus = sys.argv[1], int(sys.argv[2]), Path(sys.argv[3])
    target, seed = TARGETS[name]
    corpus.mkdir(parents=True, exist_ok=True)
    (corpus / "seed").write_bytes(seed())
    atheris.Setup([sys.argv[0], str(corpus), f"-max_total_time={seconds}", "-rss_limit_mb=2048",
                   "-max_len=65536", "-print_final_stats=1", *sys.argv[4:]], target)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
