"""The shipped Dockerfile and deploy/docker-compose.yml, run for real by Debian's docker.io.

No container registry is reachable from the test machines, so nothing is
pulled: a bookworm root filesystem is made with `debootstrap` (cached as a
tarball under CACHE_DIR, keyed by its recipe) and imported as a base image;
the images that stand in for the official python, postgres, redis and nginx
images are built on it from Debian's packages (tests/project/containers/),
each tagged by a hash of its recipe so that it is built once per machine.
The real Dockerfile is then built with `PYTHON_IMAGE` pointing at the
stand-in, and the real compose file runs with the image variables it reads
(TETHER_IMAGE, POSTGRES_IMAGE, REDIS_IMAGE, NGINX_IMAGE). The only thing the
test machine adds to a build is its CA bundle, for pip behind the machine's
TLS-inspecting egress: it goes into the python stand-in, never into the
shipped files.

The engine: `docker info` answers, or, as root, this module starts `dockerd`
itself (there is no init system on these machines) and stops it at exit.
Compose is `docker compose` (v2) when the CLI has it, else Debian's
`docker-compose` (v1). Anything missing raises ServiceUnavailable, which the
test turns into a loud skip, or a failure with REQUIRE_SERVICES=1.
"""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.services import ServiceUnavailable

ROOT = Path(__file__).resolve().parents[2]
RECIPES = ROOT / "tests" / "project" / "containers"
COMPOSE_FILE = ROOT / "deploy" / "docker-compose.yml"
CACHE_DIR = Path(os.environ.get("TETHER_CONTAINER_CACHE", "/var/cache/tether-test"))
DEBIAN_MIRROR = os.environ.get("TETHER_DEBIAN_MIRROR", "http://deb.debian.org/debian")
DEBOOTSTRAP = ["--variant=minbase", "--include=ca-certificates", "bookworm"]
HOST_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
DOCKERD_START_TIMEOUT = 60.0
# Stand-ins: the recipe file in RECIPES, the variable of docker-compose.yml / the Dockerfile.
STAND_INS = {
    "python": "python.Dockerfile",
    "postgres": "postgres.Dockerfile",
    "redis": "redis.Dockerfile",
    "nginx": "nginx.Dockerfile",
    "prometheus": "prometheus.Dockerfile",
}


def _run(
    cmd: list[str],
    *,
    env: dict[str, str] | None = None,
    timeout: float = 600,
    check: bool = True,
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        cmd, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
    if check and result.returncode != 0:
        tail = "\n".join((result.stdout + result.stderr).splitlines()[-40:])
        raise RuntimeError(f"`{' '.join(cmd)}` exited {result.returncode}:\n{tail}")
    return result


def _digest(*parts: bytes | str) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(part.encode() if isinstance(part, str) else part)
        h.update(b"\0")
    return h.hexdigest()[:12]


# ------------------------------------------------------------------- engine


@dataclass
class Engine:
    docker: str
    compose: list[str]
    dockerd: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    log: Path | None = None

    def env(self, **extra: str) -> dict[str, str]:
        # The classic builder: `docker build` without buildx, as Debian's docker.io has it.
        return {**os.environ, "DOCKER_BUILDKIT": "0", "COMPOSE_DOCKER_CLI_BUILD": "0", **extra}

    def docker_run(self, *args: str, timeout: float = 600, check: bool = True) -> str:
        return _run([self.docker, *args], env=self.env(), timeout=timeout, check=check).stdout

    def has_image(self, ref: str) -> bool:
        return (
            _run([self.docker, "image", "inspect", ref], env=self.env(), check=False).returncode
            == 0
        )

    def stop(self) -> None:
        proc, self.dockerd = self.dockerd, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def _answers(docker: str) -> bool:
    try:
        return _run([docker, "info"], timeout=20, check=False).returncode == 0
    except subprocess.TimeoutExpired:
        return False


def _compose_command(docker: str) -> list[str] | None:
    with contextlib.suppress(subprocess.TimeoutExpired):
        if _run([docker, "compose", "version"], timeout=20, check=False).returncode == 0:
            return [docker, "compose"]
    v1 = shutil.which("docker-compose")
    return [v1] if v1 else None


def start_engine(log_dir: Path) -> Engine:
    """A docker daemon that answers: the running one, or one started here (root only)."""
    docker = shutil.which("docker")
    if not docker:
        raise ServiceUnavailable(
            "no `docker` CLI: the container test runs the shipped Dockerfile and "
            "deploy/docker-compose.yml with Debian's docker.io (apt-get install docker.io "
            "docker-compose debootstrap; .ci/run does)"
        )
    compose = _compose_command(docker)
    if not compose:
        raise ServiceUnavailable(
            "no compose: neither `docker compose` nor `docker-compose` "
            "(apt-get install docker-compose)"
        )
    if _answers(docker):
        return Engine(docker, compose)
    dockerd = shutil.which("dockerd") or (
        "/usr/sbin/dockerd" if Path("/usr/sbin/dockerd").exists() else None
    )
    if not dockerd:
        raise ServiceUnavailable(
            "the docker daemon does not answer and there is no `dockerd` to start "
            "(apt-get install docker.io)"
        )
    if os.geteuid() != 0:
        raise ServiceUnavailable(
            "the docker daemon does not answer, and only root can start `dockerd`"
        )
    log = log_dir / "dockerd.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [dockerd], stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    engine = Engine(docker, compose, proc, log)
    atexit.register(engine.stop)
    deadline = time.monotonic() + DOCKERD_START_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            break
        if _answers(docker):
            return engine
        time.sleep(0.5)
    engine.stop()
    tail = "\n".join(log.read_text(errors="replace").splitlines()[-20:])
    raise ServiceUnavailable(
        f"dockerd did not come up within {DOCKERD_START_TIMEOUT:.0f}s:\n{tail}"
    )


# ------------------------------------------------------------------- images


def base_image(engine: Engine) -> str:
    """bookworm from debootstrap, imported once; its tarball cached under CACHE_DIR."""
    key = _digest(*DEBOOTSTRAP, DEBIAN_MIRROR)
    ref = f"tether-test/bookworm:{key}"
    if engine.has_image(ref):
        return ref
    tarball = CACHE_DIR / f"bookworm-{key}.tar"
    if not tarball.exists():
        debootstrap = shutil.which("debootstrap") or "/usr/sbin/debootstrap"
        if not Path(debootstrap).exists():
            raise ServiceUnavailable(
                "no debootstrap to make the base image (apt-get install debootstrap)"
            )
        CACHE_DIR.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=CACHE_DIR, prefix="rootfs-") as rootfs:
            try:
                _run([debootstrap, *DEBOOTSTRAP, rootfs, DEBIAN_MIRROR], timeout=900)
            except RuntimeError as exc:
                raise ServiceUnavailable(f"debootstrap of bookworm failed: {exc}") from None
            partial = tarball.with_suffix(".partial")
            _run(["tar", "-C", rootfs, "--numeric-owner", "-cf", str(partial), "."], timeout=600)
            partial.rename(tarball)
    with tarball.open("rb") as data:
        result = subprocess.run(
            [engine.docker, "import", "-", ref],
            stdin=data,
            capture_output=True,
            env=engine.env(),
            timeout=600,
            check=False,
        )
    if result.returncode != 0:
        raise RuntimeError(f"docker import failed: {result.stderr.decode(errors='replace')}")
    return ref


def stand_in(engine: Engine, base: str, name: str) -> str:
    """The stand-in for an official image, built from Debian's packages on `base`."""
    recipe = RECIPES / STAND_INS[name]
    extra = sorted(RECIPES.glob(f"{name}-*.sh"))
    ca = HOST_CA_BUNDLE.read_bytes() if name == "python" and HOST_CA_BUNDLE.exists() else b""
    key = _digest(base, recipe.read_bytes(), *(p.read_bytes() for p in extra), ca)
    ref = f"tether-test/{name}:{key}"
    if engine.has_image(ref):
        return ref
    with tempfile.TemporaryDirectory(prefix=f"tether-{name}-") as context:
        shutil.copy(recipe, Path(context) / "Dockerfile")
        for path in extra:
            shutil.copy(path, Path(context) / path.name)
        if name == "python":
            (Path(context) / "host-ca.pem").write_bytes(ca)
        engine.docker_run(
            "build", "-q", "--network", "host", "--build-arg", f"BASE={base}", "-t", ref, context,
            timeout=900,
        )  # fmt: skip
    return ref


def stand_ins(engine: Engine, base: str) -> dict[str, str]:
    """Every stand-in, built side by side (mostly waiting on Debian's mirror)."""
    with ThreadPoolExecutor(len(STAND_INS)) as pool:
        futures = {name: pool.submit(stand_in, engine, base, name) for name in STAND_INS}
        return {name: future.result() for name, future in futures.items()}


def build_tether(engine: Engine, python_image: str, tag: str) -> str:
    """The shipped Dockerfile, built from the repository top as users build it."""
    engine.docker_run(
        "build", "-q", "--network", "host", "--build-arg", f"PYTHON_IMAGE={python_image}",
        "-t", tag, str(ROOT),
        timeout=900,
    )  # fmt: skip
    return tag


# ------------------------------------------------------------------- compose


@dataclass
class ComposeStack:
    """One project of deploy/docker-compose.yml, named so it cannot meet another run's."""

    engine: Engine
    project: str
    variables: dict[str, str]

    def compose(
        self, *args: str, timeout: float = 300, check: bool = True, monitoring: bool = False
    ) -> str:
        """The compose CLI on this project; `monitoring` enables that profile."""
        cmd = [*self.engine.compose, "-p", self.project, "-f", str(COMPOSE_FILE)]
        cmd += [*(["--profile", "monitoring"] if monitoring else []), *args]
        result = _run(cmd, env=self.engine.env(**self.variables), timeout=timeout, check=check)
        return result.stdout + result.stderr

    def container(self, service: str) -> str:
        out = self.compose("ps", "-q", service).split()
        if not out:
            raise AssertionError(f"no container for {service}")
        return out[0]

    def inspect(self, service: str) -> dict:
        return json.loads(self.engine.docker_run("inspect", self.container(service)))[0]

    def health(self, service: str) -> str:
        state = self.inspect(service)["State"]
        return state.get("Health", {}).get("Status", state["Status"])

    def logs(self, service: str = "", tail: int | None = None) -> str:
        args = ["logs", "--no-color"]
        if tail is not None:
            args += ["--tail", str(tail)]
        if service:
            args.append(service)
        return self.compose(*args, check=False)

    def manage(self, service: str, *args: str) -> str:
        """`manage.py` in a running node, as operators run it (`exec`)."""
        return self.compose("exec", "-T", service, "python3", "manage.py", *args)

    def down(self) -> None:
        # With the profile: `down` leaves the containers of a profile it is not told of.
        self.compose(
            "down", "-v", "--remove-orphans", "-t", "30", timeout=180, check=False, monitoring=True
        )
