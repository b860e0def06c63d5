"""Generates the gRPC stubs of containerd's snapshot API into snapshotter/proto/.

The .proto files are checked in; the *_pb2*.py files are build output (gitignored),
made by `make proto` (`python -m snapshotter.protogen`) with grpc_tools.protoc so
that they always match the installed protobuf runtime. The Google well-known types
(Empty, FieldMask, Timestamp) come from the include dir grpc_tools ships, which is
the same descriptor set the protobuf runtime registers.
"""
from __future__ import annotations

import sys
from importlib import resources
from pathlib import Path

PROTO_DIR = Path(__file__).resolve().parent / "proto"
REPO_ROOT = PROTO_DIR.parent.parent
PROTOS = ("mount.proto", "snapshots.proto", "criauth.proto")


def generate() -> None:
    """Runs protoc for every .proto; raises RuntimeError when protoc fails."""
    from grpc_tools import protoc

    include = str(resources.files("grpc_tools") / "_proto")
    for name in PROTOS:
        rel = PROTO_DIR.relative_to(REPO_ROOT) / name
        args = ["protoc", f"-I{REPO_ROOT}", f"-I{include}", f"--python_out={REPO_ROOT}",
                f"--grpc_python_out={REPO_ROOT}", str(PROTO_DIR / name)]
        if protoc.main(args) != 0:
            raise RuntimeError(f"protoc failed for {rel}")


def main() -> int:
    generate()
    print(f"protogen: stubs generated in {PROTO_DIR}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
