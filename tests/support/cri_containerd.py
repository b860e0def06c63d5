"""A private containerd 1.6 with its CRI plugin ON, for Kubernetes-path tests of the snapshotter.

tests/support/containerd.py starts containerd with CRI disabled (every other test); this one
writes its own config and reuses that module's `Containerd` record (ctr, logs, shims, stop).
What CRI needs to run here without a kubelet, CNI or a system containerd:

- `snapshotter` = the proxy plugin under test and `disable_snapshot_annotations = false`, so CRI
  pulls through it and adds the `containerd.io/snapshot/cri.*` labels (the Kubernetes config of
  docs/snapshotter.md);
- `sandbox_image` = a tiny image of the test registry whose entrypoint sleeps (the pause image);
- a `config_path` hosts dir saying the test registry (127.0.0.1:PORT) speaks plain HTTP;
- pods run on the host network (the tests ask for NamespaceMode NODE), so no CNI config is
  needed; `cni.conf_dir` points at an empty private dir all the same (CRI only logs that it has
  no network config, and host-network pods do not use it);
- runc's state (`options.Root`) in a private dir, not /run/containerd/runc/k8s.io: CRI always
  uses the `k8s.io` namespace, so this keeps its containers apart from any other containerd's;
- the streaming server on 127.0.0.1 and a port of the OS's choosing (its default 10010 would
  clash between two instances); cgroupfs driver (no systemd here), no AppArmor (not loaded);
- `restrict_oom_score_adj = true`: runc cannot give the sandbox CRI's oom_score_adj of -998
  on this VM (EACCES; the pod fails with "can't get final child's PID from pipe");
- pods' cgroups under a private parent (`cgroup_parent` in their config), removed at the end.

Everything lives under one private temp dir and is stopped by PID in `stop()`: pods first,
through CRI (their containers with them), then any container runc still knows, then containerd
and its shims, then the mounts left under the dir, then the pods' cgroup parent.
"""
from __future__ import annotations

import gzip
import hashlib
import io
import json
import shutil
import subprocess
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

from tests.support.containerd import (
    Containerd,
    launch_containerd,
    start_snapshotter,
    wait_serving,
    write_snapshotter_config,
)
from tests.support.cri import CriClient
from tests.support.stack import Stack
from tests.support.tinyimage import push_tiny_image, put_blob

CRI_NAMESPACE = "k8s.io"      # the containerd namespace CRI always uses
MANIFEST_TYPE = "application/vnd.oci.image.manifest.v1+json"


@dataclass
class CriContainerd:
    """containerd with CRI on `ctd.address`; `cri` speaks runtime.v1 to it."""
    ctd: Containerd
    cri: CriClient
    runc_root: Path
    log_dir: Path          # pods' log_directory lives below it
    cgroup_parent: str     # "/NAME": the pods' cgroups (cgroupfs), removed by stop()

    def pod_log_dir(self, name: str) -> Path:
        d = self.log_dir / name
        d.mkdir(parents=True, exist_ok=True)
        return d

    def pod_config(self, name: str):
        """The kubelet-like config of a pod `name` (CriClient.pod_config) with its private log
        dir and cgroup parent."""
        return self.cri.pod_config(name, self.pod_log_dir(name), self.cgroup_parent)

    @property
    def runc_state(self) -> Path:
        """runc's --root of CRI's containers (the shim adds the namespace to options.Root)."""
        return self.runc_root / CRI_NAMESPACE

    def runc_containers(self) -> list[str]:
        r = subprocess.run(["runc", "--root", str(self.runc_state), "list", "-q"], capture_output=True,
                           text=True, check=False, timeout=60)
        return r.stdout.split() if r.returncode == 0 else []

    def remove_all_pods(self) -> list[str]:
        """Stops and removes every pod CRI knows (and so their containers); returns errors."""
        errors = []
        try:
            pods = self.cri.list_pods()
        except Exception as e:  # noqa: BLE001 - teardown: report, go on with the rest
            return [f"ListPodSandbox: {e}"]
        for pod in pods:
            try:
                self.cri.remove_pod(pod)
            except Exception as e:  # noqa: BLE001
                errors.append(f"remove pod {pod}: {e}")
        return errors

    def stop(self) -> None:
        """Pods (through CRI), leftover runc containers, then containerd and its shims by PID."""
        try:
            if self.ctd.proc.poll() is None:
                self.remove_all_pods()
            self.cri.close()
        finally:
            for cid in self.runc_containers():
                subprocess.run(["runc", "--root", str(self.runc_state), "delete", "--force", cid],
                               capture_output=True, check=False, timeout=60)
            self.ctd.stop()
            _remove_cgroup(self.cgroup_parent)


def _remove_cgroup(path: str) -> None:
    """Removes the (empty, once runc deleted the containers) cgroup `path` from every hierarchy."""
    base = Path("/sys/fs/cgroup")
    for d in [base / path.lstrip("/"), *(h / path.lstrip("/") for h in base.iterdir() if h.is_dir())]:
        try:
            d.rmdir()
        except OSError:
            pass


def push_variant(registry_host: str, repo: str, tag: str, *, entrypoint: list[str] | None = None,
                 files: dict[str, bytes] | None = None) -> str:
    """The tiny dash image (tests/support/tinyimage.py) pushed as repo:tag, with `entrypoint` set
    and/or one more plain layer holding `files` (path -> bytes). Returns "host/repo:tag"."""
    import requests

    base = f"http://{registry_host}"
    push_tiny_image(registry_host, repo, "tiny-base")
    manifest = requests.get(f"{base}/v2/{repo}/manifests/tiny-base", headers={"Accept": MANIFEST_TYPE},
                            timeout=30).json()
    config = requests.get(f"{base}/v2/{repo}/blobs/{manifest['config']['digest']}", timeout=30).json()
    if entrypoint is not None:
        config["config"] = {**config["config"], "Entrypoint": entrypoint, "Cmd": []}
    if files:
        layer, diff_id = _files_layer(files)
        manifest["layers"].append({"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                                   "digest": put_blob(base, repo, layer), "size": len(layer)})
        config["rootfs"]["diff_ids"].append(diff_id)
    data = json.dumps(config).encode()
    manifest["config"] = {**manifest["config"], "digest": put_blob(base, repo, data), "size": len(data)}
    requests.put(f"{base}/v2/{repo}/manifests/{tag}", data=json.dumps(manifest).encode(), timeout=30,
                 headers={"Content-Type": MANIFEST_TYPE}).raise_for_status()
    return f"{registry_host}/{repo}:{tag}"


def push_pause_image(registry_host: str, repo: str = "cri-pause", tag: str = "1") -> str:
    """The pod sandbox image: `sleep infinity` as its entrypoint (a pause container must outlive
    the pod's containers: they join its namespaces)."""
    return push_variant(registry_host, repo, tag, entrypoint=["/usr/bin/sleep", "infinity"])


def _files_layer(files: dict[str, bytes]) -> tuple[bytes, str]:
    """A gzip tar layer of `files` (fixed mtimes: same input, same digest); (blob, diff_id)."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path, data in sorted(files.items()):
            ti = tarfile.TarInfo(path.lstrip("/"))
            ti.size, ti.mode, ti.mtime = len(data), 0o644, 0
            tar.addfile(ti, io.BytesIO(data))
    return gzip.compress(raw.getvalue(), mtime=0), "sha256:" + hashlib.sha256(raw.getvalue()).hexdigest()


def _config(d: Path, address: str, snapshotter: str, snapshotter_socket: str, sandbox_image: str,
            plain_http: list[str], runc_root: Path) -> str:
    hosts = d / "certs.d"
    for host in plain_http:
        (hosts / host).mkdir(parents=True, exist_ok=True)
        (hosts / host / "hosts.toml").write_text(
            f'server = "http://{host}"\n[host."http://{host}"]\n  capabilities = ["pull", "resolve"]\n')
    (d / "cni").mkdir(exist_ok=True)
    cri = 'plugins."io.containerd.grpc.v1.cri"'
    return "\n".join([
        "version = 2",
        f'root = "{d / "root"}"',
        f'state = "{d / "state"}"',
        "[grpc]", f'  address = "{address}"',
        "[ttrpc]", f'  address = "{address}.ttrpc"',
        "[debug]", '  level = "info"',
        "[metrics]", '  address = ""',
        "[proxy_plugins]",
        f"  [proxy_plugins.{snapshotter}]", '    type = "snapshot"', f'    address = "{snapshotter_socket}"',
        f"[{cri}]",
        f'  sandbox_image = "{sandbox_image}"',
        '  stream_server_address = "127.0.0.1"',
        '  stream_server_port = "0"',
        "  disable_apparmor = true",
        "  restrict_oom_score_adj = true",
        f"  [{cri}.containerd]",
        f'    snapshotter = "{snapshotter}"',
        "    disable_snapshot_annotations = false",
        '    default_runtime_name = "runc"',
        f"    [{cri}.containerd.runtimes.runc]",
        '      runtime_type = "io.containerd.runc.v2"',
        f"      [{cri}.containerd.runtimes.runc.options]",
        f'        Root = "{runc_root}"',
        "        SystemdCgroup = false",
        f"  [{cri}.cni]",
        '    bin_dir = "/usr/lib/cni"',
        f'    conf_dir = "{d / "cni"}"',
        f"  [{cri}.registry]",
        f'    config_path = "{hosts}"',
    ]) + "\n"


def start_cri_containerd(snapshotter_socket: str | Path, sandbox_image: str, plain_http: list[str],
                         workdir: Path | None = None, snapshotter: str = "imgfs",
                         timeout: float = 60) -> CriContainerd:
    """Starts containerd with CRI using proxy snapshotter `snapshotter`; returns once CRI answers
    Version. On failure everything started is stopped and the error carries containerd's log."""
    d = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="cri-", dir="/tmp"))
    d.mkdir(parents=True, exist_ok=True)
    address = str(d / "c.sock")      # unix socket paths must stay under 108 bytes: short dir
    runc_root, log_dir = d / "runc", d / "pods"
    log_dir.mkdir(exist_ok=True)
    config = _config(d, address, snapshotter, str(snapshotter_socket), sandbox_image, plain_http, runc_root)
    # `namespace` is for ctr calls of the tests (leases for a synchronous GC) and for stop(),
    # which removes /run/containerd/runc/NAMESPACE if empty: a private name, never CRI's k8s.io
    # (CRI's runc state is in runc_root anyway).
    ctd = launch_containerd(d, config, "imgfs-cri-")
    cc = CriContainerd(ctd=ctd, cri=CriClient(address), runc_root=runc_root, log_dir=log_dir,
                       cgroup_parent="/" + ctd.namespace)

    def answers() -> bool:
        try:
            cc.cri.version()
            return True
        except Exception:  # noqa: BLE001 - not serving yet: poll on
            return False

    wait_serving(ctd, answers, cc.stop, "containerd's CRI", timeout)
    return cc


@dataclass
class CriStack:
    """An imgfs-snapshotter and a CRI containerd using it (tests/support/stack.py's Stack gives the
    daemon/mount/GC helpers; `cc.cri` is the kubelet's side)."""
    stack: Stack
    cc: CriContainerd

    @property
    def cri(self) -> CriClient:
        return self.cc.cri

    @property
    def image_socket(self) -> Path:
        """The snapshotter's CRI image service proxy (make_cri_stack(image_proxy=True))."""
        return self.stack.dir / "img.sock"

    def stop(self) -> None:
        """Pods and containers first (through CRI), then containerd, the snapshotter, its daemons
        and every mount left under the private dir: by PID, also after a failed test."""
        try:
            self.cc.stop()
        finally:
            self.stack.stop()


def make_cri_stack(registry_host: str, sandbox_image: str, extra_config: str = "",
                   more_hosts: tuple[str, ...] = (), image_proxy: bool = False) -> CriStack:
    """Snapshotter (test config, plain HTTP to `registry_host` and `more_hosts`) + containerd with
    CRI using it. `image_proxy`: the snapshotter also serves its CRI image service proxy at
    `CriStack.image_socket`, forwarding to this containerd's CRI (a kubelet's
    --image-service-endpoint)."""
    d = Path(tempfile.mkdtemp(prefix="cri-", dir="/tmp"))
    root, sock = d / "root", d / "imgfs.sock"
    hosts = [registry_host, *more_hosts]
    proxy = f'[cri]\nlisten = "{d / "img.sock"}"\nbackend = "{d / "ctd" / "c.sock"}"\n' if image_proxy else ""
    cfg = write_snapshotter_config(root, sock, hosts, extra_config, registry_extra=proxy)
    snap = start_snapshotter(cfg, root, sock, d / "snapshotter.log")
    try:
        cc = start_cri_containerd(sock, sandbox_image, hosts, workdir=d / "ctd")
    except BaseException:
        snap.stop()
        shutil.rmtree(d, ignore_errors=True)
        raise
    return CriStack(stack=Stack(dir=d, snap=snap, ctd=cc.ctd, registry_host=registry_host), cc=cc)
