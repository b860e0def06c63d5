"""The imgbench workloads: HelloBench-style images, each with a readiness condition.

Why these: HelloBench (Harter et al., FAST'16) showed that a container reads a small
part of its image to start, and that the part differs by kind of workload (an
interpreter importing a big library, a server opening a socket, a compiler, a JVM).
One of each kind covers the access patterns that matter for lazy loading: many small
files (python, node), a few large ones read in part (jvm), a toolchain (gcc).

Every image has two layers: the shared Debian minbase (identical bytes in every
image, so a registry stores it once) and an app layer with the packages below. The
readiness condition runs inside the container and prints READY_MARKER (a shell
builtin: no file is read after it) when it holds; the time ends at the marker. The
container then exits, but its snapshot (and so the image's fusefs daemon with its
counters) lives on until the harness tears the node down.
"""
from __future__ import annotations

from dataclasses import dataclass, field

READY_MARKER = "IMGBENCH-READY"

HELLO_C = '#include <stdio.h>\nint main(void) { puts("hello from gcc"); return 0; }\n'
HELLO_JAVA = ('public class Hello { public static void main(String[] a) {'
              ' System.out.println("hello from java " + System.getProperty("java.version")); } }\n')

_NODE_SERVER = (
    "const http = require('http');"
    "const s = http.createServer((q, r) => r.end('ok'));"
    "s.listen(0, '127.0.0.1', () => http.get({host: '127.0.0.1', port: s.address().port},"
    " (r) => { r.resume(); r.on('end', () => { console.log('node http server answered ' + r.statusCode);"
    " s.close(); }); }));"
)


@dataclass(frozen=True)
class Workload:
    """One benchmark image: what it installs on top of the base and how it proves it is ready.

    `check` is a shell snippet run with /bin/sh in the container; it must succeed only
    once the workload is ready (the harness appends the marker).
    `files` are extra files (path in the image -> bytes) baked into the app layer.
    """
    name: str
    packages: tuple[str, ...]
    check: str
    description: str
    files: dict[str, bytes] = field(default_factory=dict)

    def command(self) -> list[str]:
        """argv for `ctr run`: the check, then the marker. Nothing after it may read the image
        (an idle `sleep` would, and its chunks would count in the working set)."""
        return ["/bin/sh", "-c", f"{self.check} && echo {READY_MARKER}"]


WORKLOADS: dict[str, Workload] = {w.name: w for w in (
    Workload("python", ("python3", "python3-numpy"),
             "python3 -c 'import numpy; print(\"numpy\", numpy.__version__, numpy.arange(6).sum())'",
             "python3 + numpy: import numpy and print"),
    Workload("node", ("nodejs", "npm"),
             f"node -e \"{_NODE_SERVER}\"",
             "nodejs + npm: an HTTP server listening and answering one request"),
    Workload("gcc", ("gcc", "libc6-dev"),
             "cd /tmp && gcc -O1 -o hello /opt/imgbench/hello.c && ./hello",
             "gcc: compile and run hello.c",
             files={"opt/imgbench/hello.c": HELLO_C.encode()}),
    Workload("jvm", ("default-jre-headless",),
             "java -Xshare:auto -cp /opt/imgbench Hello",
             "default-jre-headless: run a class (compiled at image build time with the host's javac)",
             files={"opt/imgbench/Hello.java": HELLO_JAVA.encode()}),
    Workload("server", ("redis-server",),
             "(redis-server --port 0 --unixsocket /tmp/redis.sock --save '' --appendonly no"
             " >/tmp/redis.log 2>&1 &) && i=0 && until redis-cli -s /tmp/redis.sock ping 2>/dev/null"
             " | grep -q PONG; do i=$((i+1)); [ $i -lt 20000 ] || exit 1; sleep 0.01; done && echo PONG",
             "redis-server: accepting connections (PING answered)"),
    Workload("pydata", ("python3", "python3-numpy", "python3-scipy", "python3-pandas", "python3-matplotlib",
                        "python3-sklearn", "python3-skimage", "python3-sympy", "python3-statsmodels",
                        "python3-numba", "python3-h5py", "python3-astropy", "ipython3"),
             "python3 -c 'import numpy, scipy, scipy.linalg, pandas, matplotlib;"
             " print(\"pydata\", numpy.__version__, scipy.__version__, pandas.__version__,"
             " matplotlib.__version__, pandas.Series(numpy.arange(6)).sum())'",
             "the Python data stack (>300 MB): import numpy, scipy, pandas, matplotlib and print"),
)}


def select(names: list[str] | None, available: dict[str, Workload] | None = None) -> list[Workload]:
    """Workloads by name, in the order given; a clear error for an unknown name."""
    pool = WORKLOADS if available is None else available
    if not names:
        return list(pool.values())
    unknown = [n for n in names if n not in pool]
    if unknown:
        raise ValueError(f"unknown image(s) {', '.join(unknown)}; known: {', '.join(pool)}")
    return [pool[n] for n in names]
