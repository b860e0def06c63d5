"""CriClient: the few CRI calls a test needs to pull an image and run a pod the way a kubelet
does (host-network pods: no CNI), with the kubelet's defaults for the rest."""
from __future__ import annotations

import functools
import importlib
import shutil
import sys
import tempfile
from importlib import resources
from pathlib import Path
from types import ModuleType

import grpc

PROTO = Path(__file__).resolve().parent / "runtime_v1.proto"
NODE = 2          # NamespaceMode.NODE: the host's network namespace, so the pod needs no CNI


@functools.cache
def stubs() -> tuple[ModuleType, ModuleType]:
    """(messages, services) modules of runtime_v1.proto, generated once per process."""
    from grpc_tools import protoc

    out = Path(tempfile.mkdtemp(prefix="cri-stubs-"))
    try:
        include = str(resources.files("grpc_tools") / "_proto")
        args = ["protoc", f"-I{PROTO.parent}", f"-I{include}", f"--python_out={out}",
                f"--grpc_python_out={out}", str(PROTO)]
        if protoc.main(args) != 0:
            raise RuntimeError(f"protoc failed for {PROTO}")
        sys.path.insert(0, str(out))       # the _grpc module imports its messages by bare name
        try:
            return importlib.import_module("runtime_v1_pb2"), importlib.import_module("runtime_v1_pb2_grpc")
        finally:
            sys.path.remove(str(out))
    finally:
        shutil.rmtree(out, ignore_errors=True)


class CriClient:
    """CRI RuntimeService + ImageService on a unix socket. Every call has a deadline (`timeout`,
    generous: a pull or a container start through a lazy snapshotter on a loaded machine)."""

    def __init__(self, socket: str | Path, timeout: float = 120) -> None:
        self.pb, grpc_mod = stubs()
        self.channel = grpc.insecure_channel(f"unix://{socket}")
        self.runtime = grpc_mod.RuntimeServiceStub(self.channel)
        self.images = grpc_mod.ImageServiceStub(self.channel)
        self.timeout = timeout

    def close(self) -> None:
        self.channel.close()

    # -- images -------------------------------------------------------------------------
    def version(self):
        return self.runtime.Version(self.pb.VersionRequest(version="v1"), timeout=self.timeout)

    def pull(self, image: str, username: str = "", password: str = "") -> str:
        """PullImage (with credentials, as a kubelet sends an imagePullSecret's); returns the
        image_ref (the image id) the runtime answers."""
        auth = self.pb.AuthConfig(username=username, password=password) if username else None
        req = self.pb.PullImageRequest(image=self.pb.ImageSpec(image=image), auth=auth)
        return self.images.PullImage(req, timeout=self.timeout).image_ref

    def image_status(self, image: str):
        """The runtime's Image record, or None when it does not have the image."""
        r = self.images.ImageStatus(self.pb.ImageStatusRequest(image=self.pb.ImageSpec(image=image)),
                                    timeout=self.timeout)
        return r.image if r.HasField("image") else None

    def remove_image(self, image: str) -> None:
        self.images.RemoveImage(self.pb.RemoveImageRequest(image=self.pb.ImageSpec(image=image)),
                                timeout=self.timeout)

    # -- pods ---------------------------------------------------------------------------
    def pod_config(self, name: str, log_dir: str | Path, cgroup_parent: str = ""):
        """A kubelet-like sandbox config: host network and IPC (no CNI, nothing to set up), a PID
        namespace of the pod's own, its containers' cgroups under `cgroup_parent` (cgroupfs path)."""
        ns = self.pb.NamespaceOption(network=NODE, pid=self.pb.POD, ipc=NODE)
        return self.pb.PodSandboxConfig(
            metadata=self.pb.PodSandboxMetadata(name=name, uid=f"uid-{name}", namespace="imgfs-test"),
            log_directory=str(log_dir), labels={"imgfs-test": name},
            linux=self.pb.LinuxPodSandboxConfig(
                cgroup_parent=cgroup_parent,
                security_context=self.pb.LinuxSandboxSecurityContext(namespace_options=ns)))

    def run_pod(self, config) -> str:
        return self.runtime.RunPodSandbox(self.pb.RunPodSandboxRequest(config=config),
                                          timeout=self.timeout).pod_sandbox_id

    def pod_state(self, pod_id: str) -> int:
        req = self.pb.PodSandboxStatusRequest(pod_sandbox_id=pod_id)
        return self.runtime.PodSandboxStatus(req, timeout=self.timeout).status.state

    def list_pods(self) -> list[str]:
        return [p.id for p in self.runtime.ListPodSandbox(self.pb.ListPodSandboxRequest(),
                                                          timeout=self.timeout).items]

    def stop_pod(self, pod_id: str) -> None:
        self.runtime.StopPodSandbox(self.pb.StopPodSandboxRequest(pod_sandbox_id=pod_id),
                                    timeout=self.timeout)

    def remove_pod(self, pod_id: str) -> None:
        """StopPodSandbox then RemovePodSandbox (the kubelet's order): its containers go too."""
        self.stop_pod(pod_id)
        self.runtime.RemovePodSandbox(self.pb.RemovePodSandboxRequest(pod_sandbox_id=pod_id),
                                      timeout=self.timeout)

    # -- containers ---------------------------------------------------------------------
    def create_container(self, pod_id: str, pod_config, name: str, image: str, command: list[str],
                         log_path: str) -> str:
        """CreateContainer in the pod; its stdout/stderr go to pod log_directory/log_path."""
        ns = self.pb.NamespaceOption(network=NODE, pid=self.pb.POD, ipc=NODE)
        cfg = self.pb.ContainerConfig(
            metadata=self.pb.ContainerMetadata(name=name), image=self.pb.ImageSpec(image=image),
            command=command, log_path=log_path, labels={"imgfs-test": name},
            linux=self.pb.LinuxContainerConfig(
                security_context=self.pb.LinuxContainerSecurityContext(namespace_options=ns)))
        req = self.pb.CreateContainerRequest(pod_sandbox_id=pod_id, config=cfg, sandbox_config=pod_config)
        return self.runtime.CreateContainer(req, timeout=self.timeout).container_id

    def start_container(self, cid: str) -> None:
        self.runtime.StartContainer(self.pb.StartContainerRequest(container_id=cid), timeout=self.timeout)

    def stop_container(self, cid: str, grace: int = 0) -> None:
        self.runtime.StopContainer(self.pb.StopContainerRequest(container_id=cid, timeout=grace),
                                   timeout=self.timeout)

    def remove_container(self, cid: str) -> None:
        self.runtime.RemoveContainer(self.pb.RemoveContainerRequest(container_id=cid), timeout=self.timeout)

    def container_status(self, cid: str, verbose: bool = False):
        """(ContainerStatus, info): info holds the runtime's JSON (e.g. "info" with the pid) when verbose."""
        r = self.runtime.ContainerStatus(self.pb.ContainerStatusRequest(container_id=cid, verbose=verbose),
                                         timeout=self.timeout)
        return r.status, dict(r.info)

    def exec_sync(self, cid: str, cmd: list[str], timeout: int = 120) -> tuple[int, bytes, bytes]:
        """ExecSync: (exit code, stdout, stderr) of `cmd` run in the container."""
        r = self.runtime.ExecSync(self.pb.ExecSyncRequest(container_id=cid, cmd=cmd, timeout=timeout),
                                  timeout=timeout + self.timeout)
        return r.exit_code, r.stdout, r.stderr
