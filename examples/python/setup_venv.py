#!/usr/bin/env python3
"""Prepare a virtual environment for the Python worker example.

    python3 examples/python/setup_venv.py .venv

creates `.venv` (unless it is already up to date), installs the pinned requirements from PyPI,
and generates the `shoal.worker.v1` Python modules from `proto/shoal/worker/v1/worker.proto`
with grpcio-tools into the environment's site-packages, so that `.venv/bin/python
examples/python/counter_worker.py` runs as is. Prints the environment's python on the last line.

Several processes may call it at once (tests do): a lock file next to the environment serialises
them, and a stamp of the requirements and the proto skips the work when nothing changed.
"""

import fcntl
import hashlib
import shutil
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
PROTO_ROOT = REPO / "proto"
PROTO = "shoal/worker/v1/worker.proto"
REQUIREMENTS = HERE / "requirements.txt"
STAMP = "shoal-worker-venv.stamp"


def fingerprint() -> str:
    digest = hashlib.sha256()
    for path in (REQUIREMENTS, PROTO_ROOT / PROTO, Path(__file__).resolve()):
        digest.update(path.read_bytes())
    digest.update(sys.version.encode())
    return digest.hexdigest()


def run(*cmd: str) -> None:
    print("+", " ".join(cmd), file=sys.stderr, flush=True)
    subprocess.run(cmd, check=True, stdout=sys.stderr)


def site_packages(python: Path) -> Path:
    out = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    )
    return Path(out.stdout.strip())


def build(venv: Path) -> None:
    if venv.exists():
        shutil.rmtree(venv)
    python = venv / "bin" / "python"
    try:
        run(sys.executable, "-m", "venv", str(venv))
        pip = [str(python), "-m", "pip"]
    except subprocess.CalledProcessError:
        # Debian's python3 without the python3-venv package has no ensurepip: make the
        # environment without pip and install into it with this interpreter's pip.
        print("venv with pip failed; trying --without-pip and this python's pip", file=sys.stderr)
        shutil.rmtree(venv, ignore_errors=True)
        run(sys.executable, "-m", "venv", "--without-pip", str(venv))
        pip = [sys.executable, "-m", "pip", "--python", str(python)]
    run(
        *pip, "install", "--quiet", "--disable-pip-version-check", "--no-input",
        "-r", str(REQUIREMENTS),
    )
    out = site_packages(python)
    run(
        str(python), "-m", "grpc_tools.protoc", f"-I{PROTO_ROOT}",
        f"--python_out={out}", f"--grpc_python_out={out}", PROTO,
    )
    # Check that the generated modules import.
    run(str(python), "-c", "from shoal.worker.v1 import worker_pb2, worker_pb2_grpc")


def main() -> int:
    if len(sys.argv) != 2:
        print(f"usage: {sys.argv[0]} VENV_DIR", file=sys.stderr)
        return 2
    venv = Path(sys.argv[1]).absolute()
    venv.parent.mkdir(parents=True, exist_ok=True)
    with open(f"{venv}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        stamp = venv / STAMP
        wanted = fingerprint()
        if not (stamp.exists() and stamp.read_text() == wanted):
            build(venv)
            stamp.write_text(wanted)
    print(venv / "bin" / "python")
    return 0


if __name__ == "__main__":
    sys.exit(main())
