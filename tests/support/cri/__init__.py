"""A minimal Kubernetes CRI (runtime.v1) client for tests: the kubelet's side of the gRPC API.

crictl/cri-tools is not packaged in Debian bookworm, but CRI is plain gRPC on containerd's
socket, so the tests speak it themselves. runtime_v1.proto is a hand-written subset of
k8s.io/cri-api's api.proto (same package, names, field numbers and types: wire-compatible);
its stubs are generated at first use, into a temp dir, with grpc_tools (the generator the
snapshotter's protogen uses), so no generated code is checked in and the stubs always match
the installed protobuf runtime.
"""
from tests.support.cri.client import CriClient as CriClient
from tests.support.cri.client import stubs as stubs
