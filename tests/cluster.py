"""A CeleryExecutor Airflow cluster made of local processes, for the distributed tests and `make distributed`.

What the compose file describes, without containers: a throwaway Postgres cluster (metadata DB and Celery
result backend) and a Redis broker, then Airflow's api-server, scheduler and dag-processor, and two Celery
workers: one on the default queue and one on `gpu`, which takes the mapped `score_shard` tasks. Every
component has its own AIRFLOW_HOME and temp dir, as separate machines would, and reports its own hostname
(`[core] hostname_callable` below), so a task instance says which worker ran it. Everything listens on
127.0.0.1. The audit settings are the compose file's: `[audit] gpu_pool = gpu`, `gpu_queue = gpu`.

Like compose's `restart: always`, a watchdog restarts a component that dies (a worker killed with -9, a
scheduler that exits when its database goes away) and records when. `stop()` ends every process the
harness started, by pid and process group, whatever state the cluster is in.
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[1]
TESTS = REPO / "tests"
#: The queue and pool of the mapped saliency shards, as docker/docker-compose.yaml sets them.
GPU_QUEUE = "gpu"
GPU_POOL = "gpu"
#: Seconds without a heartbeat after which the scheduler fails a running task over to its retry (Airflow's
#: default is 300 s, which a shard lost with its GPU worker would wait out; 60 s outlasts a database failover).
TASK_HEARTBEAT_TIMEOUT_S = 60
#: How often the scheduler looks for tasks a dead scheduler left behind (Airflow's default is 300 s).
ORPHANED_TASKS_CHECK_S = 60
#: The settings this harness proves and docker/docker-compose.yaml must share (tests/test_docker.py checks).
PROVEN_SETTINGS = {
    "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor",
    "AIRFLOW__AUDIT__GPU_POOL": GPU_POOL,
    "AIRFLOW__AUDIT__GPU_QUEUE": GPU_QUEUE,
    "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT": str(TASK_HEARTBEAT_TIMEOUT_S),
    "AIRFLOW__SCHEDULER__ORPHANED_TASKS_CHECK_INTERVAL": str(ORPHANED_TASKS_CHECK_S),
}
#: Each worker's Celery queue and concurrency (`airflow celery worker -q QUEUE -c N`); the gpu worker takes one
#: shard at a time, as compose's does (its pool has one slot per GPU).
WORKERS = {"worker-default": ("default", 2), "worker-gpu": (GPU_QUEUE, 1)}
ADMIN = "admin"
#: What a REST call raises while the api-server restarts or cannot reach Postgres (RuntimeError: a 5xx reply).
API_DOWN = (httpx.HTTPError, RuntimeError)
#: The components the watchdog keeps up, in start order.
AIRFLOW_COMPONENTS = ("api-server", "scheduler", "dag-processor", *WORKERS)


def worker_hostname() -> str:
    """`[core] hostname_callable` of every component: its own name, as separate hosts would report."""
    return os.environ.get("AUDIT_CLUSTER_HOSTNAME") or socket.getfqdn()


class ClusterUnavailable(RuntimeError):
    """Postgres, Redis or the Celery provider is missing and cannot be installed here: the test skips."""


# ---------------------------------------------------------------------------------------------
# what the machine must have
# ---------------------------------------------------------------------------------------------


def _postgres_bin(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"), reverse=True)
    return str(candidates[0]) if candidates else None


def _apt_install(*packages: str) -> str | None:
    """Install Debian packages when we may (root, apt-get present); returns why not, or None when installed."""
    if os.geteuid() != 0:
        return "not root, so apt-get cannot install them"
    if shutil.which("apt-get") is None:
        return "apt-get is not available"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (["apt-get", "update", "-q"], ["apt-get", "install", "-y", "-q", *packages]):
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
        except (OSError, subprocess.TimeoutExpired) as exc:
            return f"{' '.join(cmd)} failed: {exc}"
        if done.returncode != 0:
            return f"{' '.join(cmd)} exited {done.returncode}: {done.stderr.strip()[-300:]}"
    return None


def require_services() -> None:
    """Make sure Postgres, Redis and the Celery provider are here, installing the servers with apt-get
    like the browser tests install chromium; raises ClusterUnavailable saying what is missing."""
    try:
        import airflow.providers.celery  # noqa: F401
        import psycopg2  # noqa: F401
    except ImportError as exc:
        raise ClusterUnavailable(f"{exc.name} is not installed (requirements-dev.lock pins it)") from exc
    missing = [
        pkg
        for pkg, binary in (("postgresql", "initdb"), ("redis-server", "redis-server"))
        if not (_postgres_bin(binary) if binary == "initdb" else shutil.which(binary))
    ]
    if missing:
        why = _apt_install(*missing)
        if why:
            raise ClusterUnavailable(f"{', '.join(missing)} missing and {why}")
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError as exc:
            raise ClusterUnavailable("running as root and there is no postgres user to run the server as") from exc


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# ---------------------------------------------------------------------------------------------
# processes
# ---------------------------------------------------------------------------------------------


@dataclass
class Component:
    """One long-running process of the cluster, started in its own session so its whole group can be signalled."""

    name: str
    argv: list[str]
    env: dict[str, str]
    log: Path
    user: str | None = None
    process: subprocess.Popen[bytes] | None = None
    stopping: bool = False

    def start(self) -> None:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with self.log.open("ab") as out:
            out.write(f"\n===== {time.strftime('%H:%M:%S')} starting {' '.join(self.argv)}\n".encode())
            out.flush()
            self.process = subprocess.Popen(
                self.argv,
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                cwd=self.env.get("AIRFLOW_HOME", str(REPO)),
                user=self.user,
            )
        self.stopping = False

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    def tree(self) -> list[int]:
        """The process and every descendant (task supervisors and the tasks they fork, pool children)."""
        import psutil

        if not self.alive or self.pid is None:
            return []
        try:
            parent = psutil.Process(self.pid)
            return [self.pid, *(child.pid for child in parent.children(recursive=True))]
        except psutil.NoSuchProcess:
            return []

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Signal the whole tree at once, as a lost machine loses every process on it."""
        for pid in self.tree():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)
        if self.pid is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.pid, sig)

    def stop(self, sig: int = signal.SIGTERM, grace_s: float = 20.0) -> None:
        self.stopping = True
        if not self.alive or self.process is None:
            return
        self.kill(sig)
        try:
            self.process.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            self.kill(signal.SIGKILL)
            self.process.wait(timeout=10)
        # stragglers left in the group (a task a supervisor forked) go too
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGKILL)

    def tail(self, chars: int = 3000) -> str:
        try:
            return self.log.read_text(encoding="utf-8", errors="replace")[-chars:]
        except OSError:
            return ""


@dataclass(frozen=True)
class Restart:
    component: str
    at: float
    exit_code: int | None


@dataclass
class LocalCeleryCluster:
    """Start with `with LocalCeleryCluster(root) as cluster:`; everything under `root` (logs, homes)."""

    root: Path
    gpu_slots: int = 1
    components: dict[str, Component] = field(default_factory=dict)
    restarts: list[Restart] = field(default_factory=list)
    _watching: threading.Event = field(default_factory=threading.Event)
    _watchdog: threading.Thread | None = None
    _pg_data: Path | None = None
    _token: str | None = None

    def __post_init__(self) -> None:
        self.root = Path(self.root).resolve()
        self.pg_port, self.redis_port, self.api_port = free_port(), free_port(), free_port()
        self.password = secrets.token_urlsafe(12)
        self.api_url = f"http://127.0.0.1:{self.api_port}"

    # --- lifecycle -------------------------------------------------------------------------------

    def __enter__(self) -> LocalCeleryCluster:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self, timeout_s: float = 300) -> None:
        require_services()
        self.root.mkdir(parents=True, exist_ok=True)
        self._start_postgres()
        self._start_redis()
        self._airflow_cli(["db", "migrate"], timeout_s=timeout_s)
        self._airflow_cli(["pools", "set", GPU_POOL, str(self.gpu_slots), "GPU slots for dataset_audit shards"])
        for name in AIRFLOW_COMPONENTS:
            self.components[name] = self._airflow_component(name)
            self.components[name].start()
        self._wait(self._api_healthy, timeout_s, "the api-server to answer")
        self._wait(
            lambda: self._dag_known("dataset_audit") and self._dag_known("retrain_on_clean_audit"),
            timeout_s,
            "the dag-processor to parse dags/",
        )
        self._wait(self._workers_ready, timeout_s, "both Celery workers to connect")
        for dag_id in ("dataset_audit", "retrain_on_clean_audit"):
            self.api("PATCH", f"/api/v2/dags/{dag_id}", json={"is_paused": False})
        self._watching.set()
        self._watchdog = threading.Thread(target=self._watch, name="cluster-watchdog", daemon=True)
        self._watchdog.start()

    def stop(self) -> None:
        """Stop every process this harness started, by pid, on success and on failure alike."""
        self._watching.clear()
        if self._watchdog is not None:
            self._watchdog.join(timeout=5)
        for name in reversed(list(self.components)):
            component = self.components[name]
            with contextlib.suppress(OSError, subprocess.SubprocessError):  # stopping must reach every component
                component.stop(signal.SIGINT if name == "postgres" else signal.SIGTERM)
        if self._pg_data is not None:
            shutil.rmtree(self._pg_data, ignore_errors=True)

    # --- the services ----------------------------------------------------------------------------

    def _start_postgres(self) -> None:
        user = "postgres" if os.geteuid() == 0 else None
        # The data folder must belong to the server's user, and root's pytest temp dirs are 0700.
        self._pg_data = Path(tempfile.mkdtemp(prefix="audit-cluster-pg-"))
        if user:
            entry = pwd.getpwnam(user)
            os.chown(self._pg_data, entry.pw_uid, entry.pw_gid)
        data = self._pg_data / "data"
        initdb = subprocess.run(
            [_postgres_bin("initdb") or "initdb", "-D", str(data), "-U", "airflow", "--auth=trust", "-E", "UTF8"],
            capture_output=True,
            text=True,
            timeout=120,
            user=user,
            cwd=self._pg_data,
        )
        if initdb.returncode != 0:
            raise RuntimeError(f"initdb failed: {initdb.stdout[-1500:]}{initdb.stderr[-1500:]}")
        self.components["postgres"] = Component(
            "postgres",
            [
                _postgres_bin("postgres") or "postgres",
                "-D",
                str(data),
                "-p",
                str(self.pg_port),
                "-k",
                str(self._pg_data),
                "-c",
                "listen_addresses=127.0.0.1",
                "-c",
                "max_connections=200",
                "-c",
                "fsync=off",
            ],
            env={"PATH": os.environ.get("PATH", ""), "LC_ALL": "C"},
            log=self.root / "logs" / "postgres.log",
            user=user,
        )
        self.start_postgres()
        created = subprocess.run(
            [
                "psql",
                "-h",
                "127.0.0.1",
                "-p",
                str(self.pg_port),
                "-U",
                "airflow",
                "-d",
                "postgres",
                "-c",
                "CREATE DATABASE airflow",
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        if created.returncode != 0:
            raise RuntimeError(f"CREATE DATABASE failed: {created.stderr}")

    def start_postgres(self, timeout_s: float = 60) -> None:
        self.components["postgres"].start()
        self._wait(self._postgres_ready, timeout_s, "Postgres to accept connections")

    def stop_postgres(self) -> None:
        """A fast shutdown: every client's connection is cut and new ones are refused until `start_postgres`."""
        self.components["postgres"].stop(signal.SIGINT)

    def _postgres_ready(self) -> bool:
        with socket.socket() as sock:
            sock.settimeout(1)
            if sock.connect_ex(("127.0.0.1", self.pg_port)) != 0:
                return False
        done = subprocess.run(
            ["psql", "-h", "127.0.0.1", "-p", str(self.pg_port), "-U", "airflow", "-d", "postgres", "-c", "SELECT 1"],
            capture_output=True,
            timeout=10,
        )
        return done.returncode == 0

    def _start_redis(self) -> None:
        folder = self.root / "redis"
        folder.mkdir(parents=True, exist_ok=True)
        self.components["redis"] = Component(
            "redis",
            [
                "redis-server",
                "--port",
                str(self.redis_port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(folder),
                "--protected-mode",
                "yes",
            ],
            env={"PATH": os.environ.get("PATH", "")},
            log=self.root / "logs" / "redis.log",
        )
        self.components["redis"].start()

        def answers() -> bool:
            with socket.socket() as sock:
                sock.settimeout(1)
                if sock.connect_ex(("127.0.0.1", self.redis_port)) != 0:
                    return False
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")

        self._wait(answers, 30, "Redis to answer")

    # --- Airflow ---------------------------------------------------------------------------------

    def airflow_env(self, component: str) -> dict[str, str]:
        """The settings every component shares (the compose file's x-airflow-common), plus its own home."""
        home = self.root / "homes" / component
        (home / "tmp").mkdir(parents=True, exist_ok=True)
        env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")}
        db = f"airflow@127.0.0.1:{self.pg_port}/airflow"
        env.update(
            {
                "AIRFLOW_HOME": str(home),
                "TMPDIR": str(home / "tmp"),
                "AUDIT_CLUSTER_HOSTNAME": component,
                "PYTHONPATH": os.pathsep.join(p for p in (str(TESTS), env.get("PYTHONPATH", "")) if p),
                "AIRFLOW__CORE__HOSTNAME_CALLABLE": "cluster.worker_hostname",
                **PROVEN_SETTINGS,
                "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
                "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO / "plugins"),
                "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
                "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "True",
                "AIRFLOW__CORE__FERNET_KEY": self._fernet_key(),
                "AIRFLOW__CORE__AUTH_MANAGER": (
                    "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager"
                ),
                "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{ADMIN}:admin",
                "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(self._passwords_file()),
                "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{self.api_url}/execution/",
                "AIRFLOW__API__BASE_URL": self.api_url,
                "AIRFLOW__API__HOST": "127.0.0.1",
                "AIRFLOW__API__PORT": str(self.api_port),
                "AIRFLOW__API_AUTH__JWT_SECRET": self._jwt_secret(),
                "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"postgresql+psycopg2://{db}",
                "AIRFLOW__CELERY__RESULT_BACKEND": f"db+postgresql+psycopg2://{db}",
                "AIRFLOW__CELERY__BROKER_URL": f"redis://127.0.0.1:{self.redis_port}/0",
                "AIRFLOW__AUDIT__SCHEDULE": "none",  # every audit here is triggered through the REST API
                "AIRFLOW__AUDIT__REPORTS_DIR": str(self.root / "reports"),
            }
        )
        return env

    def _fernet_key(self) -> str:
        path = self.root / "fernet.key"
        if not path.is_file():
            from cryptography.fernet import Fernet

            path.write_text(Fernet.generate_key().decode(), encoding="utf-8")
        return path.read_text(encoding="utf-8").strip()

    def _jwt_secret(self) -> str:
        path = self.root / "jwt.secret"
        if not path.is_file():
            path.write_text(secrets.token_urlsafe(48), encoding="utf-8")
        return path.read_text(encoding="utf-8").strip()

    def _passwords_file(self) -> Path:
        path = self.root / "passwords.json"
        if not path.is_file():
            path.write_text(json.dumps({ADMIN: self.password}), encoding="utf-8")
        return path

    def _airflow_component(self, name: str) -> Component:
        python = [sys.executable, "-m", "airflow"]
        if name in WORKERS:
            queue, concurrency = WORKERS[name]
            # -H names the Celery node; gossip and mingle only slow two workers on one host down. The worker's
            # log server would listen on every interface (it has no host setting), so it stays off: task logs
            # are in each worker's AIRFLOW_HOME/logs, where `logs()` does not look but a reader can.
            argv = [*python, "celery", "worker", "-q", queue, "-c", str(concurrency), "-H", f"{queue}@cluster"]
            argv += ["--without-gossip", "--without-mingle", "--skip-serve-logs"]
        elif name == "api-server":
            argv = [*python, "api-server", "-H", "127.0.0.1", "-p", str(self.api_port), "-w", "1"]
        else:
            argv = [*python, name]
        return Component(name, argv, self.airflow_env(name), self.root / "logs" / f"{name}.log")

    def _airflow_cli(self, args: list[str], timeout_s: float = 300) -> str:
        done = subprocess.run(
            [sys.executable, "-m", "airflow", *args],
            env=self.airflow_env("cli"),
            capture_output=True,
            text=True,
            timeout=timeout_s,
        )
        if done.returncode != 0:
            raise RuntimeError(f"airflow {' '.join(args)} failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
        return done.stdout

    # --- faults ----------------------------------------------------------------------------------

    def kill(self, name: str) -> float:
        """kill -9 a component and everything it started; the watchdog restarts it. Returns the time."""
        self.components[name].kill(signal.SIGKILL)
        return time.monotonic()

    @contextlib.contextmanager
    def postgres_down(self) -> Iterator[None]:
        """Postgres refuses every connection inside the block (the watchdog leaves it down), then comes back."""
        component = self.components["postgres"]
        self.stop_postgres()
        try:
            yield
        finally:
            if not component.alive:
                self.start_postgres()

    def _watch(self) -> None:
        while self._watching.is_set():
            for name, component in list(self.components.items()):
                if name == "postgres" or component.stopping or component.alive or not self._watching.is_set():
                    continue
                code = component.process.returncode if component.process else None
                self.restarts.append(Restart(name, time.monotonic(), code))
                component.start()
            self._watching.wait(1.0)

    def pids(self) -> list[int]:
        """Every live process of the cluster (servers, workers, their pools and running tasks)."""
        return [pid for component in self.components.values() for pid in component.tree()]

    def rss_bytes(self) -> int:
        import psutil

        total = 0
        for pid in self.pids():
            with contextlib.suppress(psutil.Error):
                total += psutil.Process(pid).memory_info().rss
        return total

    # --- REST API --------------------------------------------------------------------------------

    def api(self, method: str, path: str, **kwargs: Any) -> Any:
        """One authenticated REST call (a fresh token when the old one is refused); returns the JSON body."""
        for attempt in range(2):
            if self._token is None:
                reply = httpx.post(
                    f"{self.api_url}/auth/token", json={"username": ADMIN, "password": self.password}, timeout=30
                )
                reply.raise_for_status()
                self._token = reply.json()["access_token"]
            response = httpx.request(
                method,
                f"{self.api_url}{path}",
                headers={"Authorization": f"Bearer {self._token}"},
                timeout=60,
                **kwargs,
            )
            if response.status_code == 401 and attempt == 0:
                self._token = None
                continue
            if response.status_code >= 400:
                raise RuntimeError(f"{method} {path} -> {response.status_code}: {response.text[:500]}")
            return response.json() if response.content else None
        raise AssertionError("unreachable")

    def trigger(self, dag_id: str, run_id: str, conf: Mapping[str, Any]) -> dict[str, Any]:
        return dict(
            self.api(
                "POST",
                f"/api/v2/dags/{dag_id}/dagRuns",
                json={"dag_run_id": run_id, "logical_date": None, "conf": dict(conf)},
            )
        )

    def dag_run(self, dag_id: str, run_id: str) -> dict[str, Any]:
        return dict(self.api("GET", f"/api/v2/dags/{dag_id}/dagRuns/{run_id}"))

    def dag_runs(self, dag_id: str) -> list[dict[str, Any]]:
        return list(self.api("GET", f"/api/v2/dags/{dag_id}/dagRuns", params={"limit": 100})["dag_runs"])

    def task_instances(self, dag_id: str, run_id: str) -> list[dict[str, Any]]:
        body = self.api("GET", f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances", params={"limit": 1000})
        return list(body["task_instances"])

    def asset_events(self, dag_id: str, run_id: str) -> list[dict[str, Any]]:
        body = self.api("GET", "/api/v2/assets/events", params={"source_dag_id": dag_id, "source_run_id": run_id})
        return list(body["asset_events"])

    def wait_for_run(self, dag_id: str, run_id: str, timeout_s: float = 900) -> dict[str, Any]:
        """Until the run is success or failed; a component that died meanwhile is restarted by the watchdog."""
        finished: dict[str, Any] = {}

        def done() -> bool:
            with contextlib.suppress(*API_DOWN):  # the api-server may be restarting, Postgres may be down
                finished.update(self.dag_run(dag_id, run_id))
            return finished.get("state") in ("success", "failed")

        self._wait(done, timeout_s, f"{dag_id} run {run_id} to finish")
        return finished

    def wait_for_task(self, dag_id: str, run_id: str, task_id: str, state: str, timeout_s: float = 600) -> float:
        """Until some instance of `task_id` is in `state`; returns the time it was seen."""

        def seen() -> bool:
            with contextlib.suppress(*API_DOWN):  # the api-server may be restarting, Postgres may be down
                return any(
                    ti["task_id"] == task_id and ti["state"] == state for ti in self.task_instances(dag_id, run_id)
                )
            return False

        self._wait(seen, timeout_s, f"{task_id} of {run_id} to be {state}", poll_s=0.5)
        return time.monotonic()

    def _api_healthy(self) -> bool:
        try:
            return httpx.get(f"{self.api_url}/api/v2/monitor/health", timeout=5).status_code == 200
        except httpx.HTTPError:
            return False

    def _dag_known(self, dag_id: str) -> bool:
        try:
            self.api("GET", f"/api/v2/dags/{dag_id}")
            return True
        except RuntimeError:
            return False

    def _workers_ready(self) -> bool:
        return all("ready" in self.components[name].tail(20000) for name in WORKERS)

    def _wait(self, predicate: Callable[[], bool], timeout_s: float, what: str, poll_s: float = 1.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if predicate():
                return
            dead = [
                c.name
                for c in self.components.values()
                if not c.alive and not c.stopping and not self._watching.is_set()
            ]
            if dead:
                raise RuntimeError(f"while waiting for {what}, {', '.join(dead)} exited:\n" + self.logs(dead))
            time.sleep(poll_s)
        raise TimeoutError(f"timed out after {timeout_s:.0f} s waiting for {what}\n" + self.logs())

    def logs(self, names: list[str] | None = None, chars: int = 2500) -> str:
        return "\n".join(
            f"----- {name}.log\n{self.components[name].tail(chars)}"
            for name in (names or list(self.components))
            if name in self.components
        )
