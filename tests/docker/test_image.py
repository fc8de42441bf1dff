"""The Docker image: docker/Dockerfile builds, and a container of it answers /healthz and a
completion on a published port; docker/compose.yaml is a valid compose file.

Outside CI these skip where docker (or docker-compose) is absent; with `CI` set they run.
The base image is made once with debootstrap (docker/base-image.sh) and then reused; the
build reuses its cached layers, so a second run only starts a container.
"""

from __future__ import annotations

import filecmp
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

pytestmark = pytest.mark.docker

ROOT = Path(__file__).resolve().parents[2]
BASE_IMAGE = "silo-base:bookworm"
IMAGE = "silo:test"
TORCH = "torch==2.13.0"
EXTRAS = "milvus,postgres"
SYSTEM_CERTS = Path("/usr/local/share/ca-certificates")
PROXY_VARS = ("http_proxy", "https_proxy", "no_proxy", "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY")


def unavailable(reason: str) -> None:
    """Skip, except in CI, where the image must be tested."""
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI is set, so the image test must run)")
    pytest.skip(reason)


def sh(*args: str, timeout: float = 600) -> str:
    out = subprocess.run(args, capture_output=True, text=True, timeout=timeout)
    if out.returncode != 0:
        raise AssertionError(f"{' '.join(args)} exited {out.returncode}:\n{out.stdout[-4000:]}"
                             f"\n{out.stderr[-4000:]}")
    return out.stdout


@pytest.fixture(scope="module")
def docker() -> str:
    exe = shutil.which("docker")
    if exe is None:
        unavailable("docker is not installed")
    if subprocess.run([exe, "info"], capture_output=True).returncode != 0:
        unavailable("the docker daemon is not running (start dockerd)")
    return exe


def ensure_base_image(docker: str) -> None:
    """Debian from the apt mirror, imported as BASE_IMAGE (no image registry needed)."""
    found = subprocess.run([docker, "image", "inspect", BASE_IMAGE], capture_output=True)
    if found.returncode == 0:
        return
    if shutil.which("debootstrap") is None or os.geteuid() != 0:
        unavailable(f"no {BASE_IMAGE} image, and making it needs root and debootstrap")
    sh(str(ROOT / "docker" / "base-image.sh"), BASE_IMAGE, timeout=1800)


def sync(src: Path, dst: Path) -> None:
    """Copy unless identical, so the build's layer cache keeps holding."""
    if not (dst.exists() and filecmp.cmp(src, dst, shallow=False)):
        shutil.copyfile(src, dst)


def fill_build_inputs() -> None:
    """docker/certs/: this machine's extra CA certificates; docker/wheels/: the CPU torch."""
    certs = ROOT / "docker" / "certs"
    for crt in SYSTEM_CERTS.rglob("*.crt") if SYSTEM_CERTS.is_dir() else ():
        sync(crt, certs / crt.name)
    wheels = ROOT / "docker" / "wheels"
    if not list(wheels.glob("torch-2.13.0*-cp311-*.whl")):
        sh(sys.executable, "-m", "pip", "download", TORCH, "--no-deps", "--only-binary=:all:",
           "--python-version", "3.11", "-q", "-d", str(wheels), timeout=1800)


def pip_index_args() -> list[str]:
    """This machine's pip index settings that a build can reach (http and https ones)."""
    config = subprocess.run([sys.executable, "-m", "pip", "config", "list"],
                            capture_output=True, text=True).stdout
    found: dict[str, list[str]] = {"index-url": [], "extra-index-url": [], "trusted-host": []}
    for line in config.splitlines():
        key, _, value = line.partition("=")
        name = key.rpartition(".")[2]
        if name in found:
            found[name] += value.strip().strip("'\"").split()
    for name in found:
        found[name] += os.environ.get("PIP_" + name.upper().replace("-", "_"), "").split()
    found = {k: list(dict.fromkeys(v)) for k, v in found.items()}  # env is listed twice
    web = {k: [u for u in v if u.startswith(("http://", "https://"))] for k, v in found.items()}
    args = []
    if found["trusted-host"]:
        args += ["--build-arg", f"PIP_TRUSTED_HOST={' '.join(found['trusted-host'])}"]
    if web["index-url"]:
        args += ["--build-arg", f"PIP_INDEX_URL={web['index-url'][-1]}"]
    if web["extra-index-url"]:
        args += ["--build-arg", f"PIP_EXTRA_INDEX_URL={' '.join(web['extra-index-url'])}"]
    return args


def build(docker: str, dockerfile: str, tag: str, *extra: str) -> None:
    """`docker build` from the repository root, with this machine's proxy settings."""
    args = [docker, "build", "-q", "-f", dockerfile, "-t", tag,
            "--build-arg", f"BASE_IMAGE={BASE_IMAGE}", *extra]
    for var in PROXY_VARS:
        if var in os.environ:
            args += ["--build-arg", f"{var}={os.environ[var]}"]
    if any("localhost" in os.environ.get(v, "") or "127.0.0.1" in os.environ.get(v, "")
           for v in PROXY_VARS):
        args += ["--network", "host"]  # a proxy on this machine's loopback
    out = subprocess.run([*args, "."], cwd=ROOT, capture_output=True, text=True, timeout=3600)
    assert out.returncode == 0, f"docker build failed:\n{out.stdout[-6000:]}\n{out.stderr[-6000:]}"


@pytest.fixture(scope="module")
def image(docker: str) -> str:
    ensure_base_image(docker)
    fill_build_inputs()
    # with the extras compose.yaml's replicas get
    build(docker, "docker/Dockerfile", IMAGE, "--build-arg", f"EXTRAS={EXTRAS}", *pip_index_args())
    return IMAGE


def http(url: str, body: dict | None = None, timeout: float = 60) -> tuple[int, dict]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data, {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"{}")


def wait_healthy(docker: str, name: str, base: str, deadline_s: float) -> None:
    """Until /healthz answers 200; fails early, with the logs, if the container stops."""
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        try:
            if http(f"{base}/healthz", timeout=2)[0] == 200:
                return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        if sh(docker, "inspect", "-f", "{{.State.Running}}", name).strip() != "true":
            break
        time.sleep(0.5)
    logs = subprocess.run([docker, "logs", "--tail", "60", name], capture_output=True, text=True)
    raise AssertionError(f"/healthz never answered:\n{logs.stdout}\n{logs.stderr}")


def test_container_answers_healthz_and_a_completion(docker: str, image: str) -> None:
    name = f"silo-test-{os.getpid()}"
    # The parametric LM with no datastore, so it answers within seconds (the image's own
    # command, `silo serve`, first builds the default datastore: minutes).
    sh(docker, "run", "-d", "--name", name, "-p", "127.0.0.1::8000",
       "--health-interval", "1s", image,
       "silo", "serve", "--host", "0.0.0.0", "--port", "8000", "--no-datastore")
    try:
        port = sh(docker, "port", name, "8000/tcp").split()[0].rpartition(":")[2]
        base = f"http://127.0.0.1:{port}"
        wait_healthy(docker, name, base, deadline_s=300)
        status, models = http(f"{base}/v1/models")
        assert status == 200, models
        model = models["data"][0]["id"]
        status, out = http(f"{base}/v1/completions",
                           {"model": model, "prompt": "A kernel is", "max_tokens": 8})
        assert status == 200, out
        assert isinstance(out["choices"][0]["text"], str) and out["choices"][0]["text"].strip()
        # not root, and the extras' clients import
        uid = sh(docker, "exec", name, "python3", "-c",
                 "import os, psycopg, pymilvus; print(os.getuid())")
        assert uid.strip() != "0"
        # the image's HEALTHCHECK command works too
        for _ in range(60):
            health = sh(docker, "inspect", "-f", "{{.State.Health.Status}}", name).strip()
            if health != "starting":
                break
            time.sleep(0.5)
        assert health == "healthy"
    finally:
        subprocess.run([docker, "rm", "-f", "-v", name], capture_output=True)


def test_compose_file_is_valid() -> None:
    compose = shutil.which("docker-compose")
    if compose is None:
        unavailable("docker-compose (v1, Debian's package) is not installed")
    args = [compose, "-f", str(ROOT / "docker" / "compose.yaml"), "config"]
    out = subprocess.run(args, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    services = sh(*args, "--services", timeout=120).split()
    assert {"postgres", "milvus", "silo-1", "silo-2", "lb"} <= set(services), services


def test_load_balancer_image_and_config(docker: str) -> None:
    ensure_base_image(docker)
    build(docker, "docker/lb.Dockerfile", "silo-lb:test")
    # the upstreams are compose's service names; point them anywhere to check the config
    sh(docker, "run", "--rm", "--add-host", "silo-1:127.0.0.1", "--add-host", "silo-2:127.0.0.1",
       "silo-lb:test", "nginx", "-t", timeout=120)
