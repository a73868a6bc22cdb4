"""The Debian packages the local cluster's node and image builds need, installed when missing.

Standard library only: ``make test`` starts its background prefetch (Go builds, image builds)
with the machine's own Python before the project's virtualenv exists, and the image lane asks
for buildah and debootstrap through here.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DEBIAN_PACKAGES = {
    "containerd": "containerd",
    "runc": "runc",
    "/usr/lib/cni/bridge": "containernetworking-plugins",
    "iptables": "iptables",
    "buildah": "buildah",
    "debootstrap": "debootstrap",
    "conntrack": "conntrack",
    "ip": "iproute2",
    "mount": "mount",
}
"""A program or file the cluster needs -> the Debian package that provides it."""


def missing() -> list[str]:
    """The packages of :data:`DEBIAN_PACKAGES` whose program or file is not on this machine."""
    return sorted({pkg for probe, pkg in DEBIAN_PACKAGES.items() if not (Path(probe).exists() or shutil.which(probe))})


def ensure() -> None:
    """Install the missing packages (buildah and debootstrap among them: ``make test``'s
    background image builds ask for them while the cluster starts, so one installer at a time,
    and apt waits for dpkg's own lock rather than failing)."""
    if not missing():
        return
    with open(Path(tempfile.gettempdir()) / "tuneforge-host-packages.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        todo = missing()
        if not todo:
            return
        print(f"[{time.strftime('%H:%M:%S')}] Installing Debian packages: {' '.join(todo)}", file=sys.stderr, flush=True)
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        wait = ["-o", "DPkg::Lock::Timeout=600"]
        subprocess.run(["apt-get", *wait, "update", "-qq"], check=True, env=env)
        subprocess.run(["apt-get", *wait, "install", "-y", "-qq", *todo], check=True, env=env, stdout=subprocess.DEVNULL)
