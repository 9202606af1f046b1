"""The shared stack on one machine: PostgreSQL, an MLflow server with basic auth that serves
the artifacts itself, Prefect's server behind an auth string, and process workers. The same
services and settings as `deployments/stack/compose.yaml`, started from the programs on PATH
(PostgreSQL's `initdb`, `pg_ctl`; this Python's `mlflow` and `prefect`), for trying the stack
and for the tests.

    tuneforge stack up [--dir .stack] [--workers 2] [--pool-limit 2]
    source .stack/env.sh        # PREFECT_API_URL, MLFLOW_TRACKING_URI and the credentials
    tuneforge stack status
    tuneforge stack down

`up` starts what is not running and leaves the rest: after a crash it restarts only the dead
services, on the same ports and data. Everything lives in the stack's folder: PostgreSQL's
data (databases `mlflow`, `mlflow_auth`, `prefect`), MLflow's artifacts, Prefect's home (its
lease files among them), the logs, `stack.json` (ports and process ids) and `env.sh`.

Credentials: from the environment (`TUNEFORGE_STACK_DB_PASSWORD`, `..._ADMIN_PASSWORD`,
`..._PREFECT_PASSWORD`, `..._FLASK_SECRET`), else from `credentials.json` in the folder,
generated on the first `up` with mode 600 and refused when others can read it. They reach the
services through environment variables only (PGPASSWORD, MLFLOW_AUTH_ADMIN_PASSWORD,
PREFECT_SERVER_API_AUTH_STRING): no command line, config file or log holds one. `env.sh`
(mode 600) holds what a client needs.

PostgreSQL refuses to run as root; as root the stack runs it as the `postgres` user, which
must be able to reach the folder.
"""

from __future__ import annotations

import json
import os
import pwd
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass, field
from glob import glob
from pathlib import Path
from typing import Any, ClassVar

from tuneforge.prefect_server import LEASE_STORAGE, REPOSSESSOR_LOOP_S

DB_USER = "tuneforge"
DATABASES = ("mlflow", "mlflow_auth", "prefect")
ADMIN_USER = "admin"
PREFECT_USER = "tuneforge"
HOST = "127.0.0.1"
# Default ports: PostgreSQL's off its usual 5432 (a system server may hold that), MLflow's
# and Prefect's their own defaults. 0 picks free ones (the tests do).
DEFAULT_PORTS = {"postgres": 15432, "mlflow": 5000, "prefect": 4200}
START_TIMEOUT_S = 120
# MLflow's basic-auth app: who may do what when nothing was granted. READ lets every user
# browse every experiment and model; creating, editing and moving aliases need EDIT or MANAGE
# on the model (its creator has MANAGE), granted through MLflow's auth API or UI.
DEFAULT_PERMISSION = "READ"


class StackError(RuntimeError):
    """The stack cannot start or be reached; the message is one line."""


@dataclass(frozen=True)
class Credentials:
    db_password: str
    admin_password: str
    prefect_password: str
    flask_secret: str

    ENV: ClassVar[dict[str, str]] = {
        "db_password": "TUNEFORGE_STACK_DB_PASSWORD",
        "admin_password": "TUNEFORGE_STACK_ADMIN_PASSWORD",
        "prefect_password": "TUNEFORGE_STACK_PREFECT_PASSWORD",
        "flask_secret": "TUNEFORGE_STACK_FLASK_SECRET",
    }

    @property
    def prefect_auth_string(self) -> str:
        return f"{PREFECT_USER}:{self.prefect_password}"


def load_credentials(path: Path, create: bool) -> Credentials:
    """The environment's values over those of `path` (a JSON file only its owner may read),
    which is created with new random values when missing and `create`."""
    stored: dict[str, str] = {}
    if path.exists():
        info = path.stat()
        if info.st_uid != os.getuid() or info.st_mode & 0o077:
            raise StackError(
                f"{path}: others can read it (mode {info.st_mode & 0o777:o}, owner uid "
                f"{info.st_uid}); it holds passwords: chmod 600 it, as its owner"
            )
        try:
            stored = json.loads(path.read_text())
        except ValueError as exc:
            raise StackError(f"{path}: not JSON ({exc})") from None
    elif create:
        stored = {key: secrets.token_urlsafe(24) for key in Credentials.ENV}
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(stored, f)
    values = {}
    for key, env_name in Credentials.ENV.items():
        value = os.environ.get(env_name) or stored.get(key)
        if not value:
            raise StackError(f"{path}: no {key} (nor {env_name} in the environment)")
        values[key] = value
    return Credentials(**values)


@dataclass
class StackState:
    """What `stack.json` records: the ports chosen and the processes started."""

    ports: dict[str, int] = field(default_factory=dict)
    pids: dict[str, int] = field(default_factory=dict)
    workers: int = 1
    pool: str = "cpu"
    pool_limit: int | None = None  # flow runs the pool runs at once; None: any number
    project: str = ""  # where workers start flow runs (TUNEFORGE_HOME)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def _alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie (exited, not yet reaped by whoever started it) is not running.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[-1][0] != "Z"
    except OSError:
        return True


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except (OSError, urllib.error.HTTPError):
        return False


def postgres_bin(program: str) -> str:
    """`program` from PATH, else from Debian's /usr/lib/postgresql/VERSION/bin."""
    found = shutil.which(program) or next(
        iter(sorted(glob(f"/usr/lib/postgresql/*/bin/{program}"), reverse=True)), None
    )
    if not found:
        raise StackError(
            f"{program}: not found on PATH or in /usr/lib/postgresql/*/bin; install "
            "PostgreSQL (15 or newer), or run the stack with Docker Compose "
            "(deployments/stack/compose.yaml)"
        )
    return found


class Stack:
    """The stack whose files live in `root`."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root).resolve()
        self.state_path = self.root / "stack.json"
        self.logs = self.root / "logs"
        self.pg_dir = self.root / "postgres"
        self.pg_data = self.pg_dir / "data"
        self.state = self._read_state()

    # ---- paths, addresses, environments ----------------------------------------------------

    def _read_state(self) -> StackState:
        if not self.state_path.exists():
            return StackState()
        return StackState(**json.loads(self.state_path.read_text()))

    def _write_state(self) -> None:
        self.state_path.write_text(json.dumps(asdict(self.state), indent=2))

    def credentials(self, create: bool = False) -> Credentials:
        return load_credentials(self.root / "credentials.json", create)

    def db_url(self, database: str, driver: str = "postgresql") -> str:
        """A database's URL, without the password (PGPASSWORD gives it)."""
        return f"{driver}://{DB_USER}@{HOST}:{self.state.ports['postgres']}/{database}"

    @property
    def mlflow_uri(self) -> str:
        return f"http://{HOST}:{self.state.ports['mlflow']}"

    @property
    def prefect_api_url(self) -> str:
        return f"http://{HOST}:{self.state.ports['prefect']}/api"

    def client_env(self, user: str = ADMIN_USER, password: str | None = None) -> dict[str, str]:
        """What a client (a user's shell, a worker) sets to use the stack as `user`."""
        creds = self.credentials()
        return {
            "PREFECT_API_URL": self.prefect_api_url,
            "PREFECT_API_AUTH_STRING": creds.prefect_auth_string,
            "MLFLOW_TRACKING_URI": self.mlflow_uri,
            "MLFLOW_TRACKING_USERNAME": user,
            "MLFLOW_TRACKING_PASSWORD": password or creds.admin_password,
        }

    def _server_env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MLFLOW_"))}
        env.update(
            PGPASSWORD=self.credentials().db_password,
            MLFLOW_DISABLE_TELEMETRY="true",
            DO_NOT_TRACK="true",
            PREFECT_SERVER_ANALYTICS_ENABLED="false",
        )
        # Settings the caller chose for the servers' own behaviour (the tests turn the UI off).
        for key in ("PREFECT_UI_ENABLED", "PREFECT_LOGGING_LEVEL"):
            if key in os.environ:
                env[key] = os.environ[key]
        env.update(extra)
        return env

    # ---- up ------------------------------------------------------------------------------

    def up(
        self,
        *,
        workers: int | None = None,
        pool: str | None = None,
        pool_limit: int | None = None,
        project: Path | str | None = None,
        ports: dict[str, int] | None = None,
    ) -> dict[str, Any]:
        """Starts every service that is not running; returns `status()`. What is not given
        stays as the last `up` recorded it (first time: 1 worker on pool `cpu`, no pool
        limit, the current directory as the project); `pool_limit=0` removes the limit."""
        self.root.mkdir(parents=True, exist_ok=True)
        self.logs.mkdir(exist_ok=True)
        self.credentials(create=True)
        for name, default in DEFAULT_PORTS.items():
            if name not in self.state.ports:
                wanted = (ports or {}).get(name, default)
                self.state.ports[name] = wanted or _free_port()
        if workers is not None:
            for index in range(workers + 1, self.state.workers + 1):
                self._terminate(f"worker-{index}")
            self.state.workers = workers
        if pool and pool != self.state.pool:
            for index in range(1, self.state.workers + 1):
                self._terminate(f"worker-{index}")  # they start again on the new pool
            self.state.pool = pool
        if pool_limit is not None:
            self.state.pool_limit = pool_limit or None
        if project is not None or not self.state.project:
            self.state.project = str(Path(project or Path.cwd()).resolve())
        workers = self.state.workers
        self._write_state()
        self._postgres_up()
        self._start(
            "mlflow", self._mlflow_command(), self._mlflow_env(), f"{self.mlflow_uri}/health"
        )
        self._start(
            "prefect",
            self._prefect_command(),
            self._prefect_env(),
            f"{self.prefect_api_url}/health",
        )
        if workers:
            self._ensure_pool()
        for index in range(1, workers + 1):
            self._start(f"worker-{index}", self._worker_command(index), self._worker_env(), None)
        env_file = self.root / "env.sh"
        fd = os.open(env_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            for key, value in self.client_env().items():
                f.write(f"export {key}={shlex.quote(value)}\n")
        return self.status()

    def _start(
        self, name: str, command: list[str], env: dict[str, str], health: str | None
    ) -> None:
        """Starts `name` unless its recorded process is alive; waits for `health` to answer."""
        pid = self.state.pids.get(name)
        if _alive(pid) and (health is None or self._wait(health, 10)):
            return
        if _alive(pid):
            self._terminate(name)
        log_path = self.logs / f"{name}.log"
        with log_path.open("ab") as log:
            process = subprocess.Popen(
                command,
                env=env,
                cwd=self.state.project or None,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # outlives `stack up`; stopped by `stack down`
            )
        self.state.pids[name] = process.pid
        self._write_state()
        if health is None:
            return
        deadline = time.monotonic() + START_TIMEOUT_S
        while not _http_ok(health):
            if process.poll() is not None or time.monotonic() > deadline:
                tail = " | ".join(log_path.read_text(errors="replace").strip().splitlines()[-3:])
                raise StackError(f"{name} did not start (log {log_path}: {tail or 'empty'})")
            time.sleep(0.3)

    @staticmethod
    def _wait(url: str, seconds: float) -> bool:
        deadline = time.monotonic() + seconds
        while not _http_ok(url):
            if time.monotonic() > deadline:
                return False
            time.sleep(0.3)
        return True

    # ---- PostgreSQL ----------------------------------------------------------------------

    def _as_postgres(self, command: list[str]) -> list[str]:
        """PostgreSQL will not run as root: as root, its programs run as `postgres`."""
        if os.geteuid() != 0:
            return command
        return ["runuser", "-u", "postgres", "--", *command]

    def _postgres_up(self) -> None:
        if not (self.pg_data / "PG_VERSION").exists():
            self._initdb()
        if not self._pg_ready():
            port = self.state.ports["postgres"]
            options = f"-p {port} -k {self.pg_dir / 'run'} -c listen_addresses={HOST}"
            command = [
                postgres_bin("pg_ctl"),
                "-D",
                str(self.pg_data),
                "-l",
                str(self.pg_dir / "postgres.log"),
                "-o",
                options,
                "-w",
                "-t",
                "60",
                "start",
            ]
            done = subprocess.run(self._as_postgres(command), capture_output=True, text=True)
            if done.returncode != 0:
                log = self.pg_dir / "postgres.log"
                tail = (
                    log.read_text(errors="replace").strip().splitlines()[-1:]
                    if log.exists()
                    else []
                )
                raise StackError(
                    f"PostgreSQL did not start on port {port}: "
                    f"{(done.stderr.strip() or ' '.join(tail)).splitlines()[-1]}"
                )
        self._create_databases()

    def _initdb(self) -> None:
        (self.pg_dir / "run").mkdir(parents=True, exist_ok=True)
        password_file = self.pg_dir / "initdb-password"
        fd = os.open(password_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(self.credentials().db_password + "\n")
        if os.geteuid() == 0:
            owner = pwd.getpwnam("postgres")
            for path in (self.pg_dir, self.pg_dir / "run", password_file):
                os.chown(path, owner.pw_uid, owner.pw_gid)
            reach = subprocess.run(
                ["runuser", "-u", "postgres", "--", "test", "-w", str(self.pg_dir)]
            )
            if reach.returncode != 0:
                raise StackError(
                    f"{self.root}: the postgres user cannot reach it (running as root, "
                    "PostgreSQL runs as postgres): choose a --dir it can reach, e.g. under /srv"
                )
        command = [
            postgres_bin("initdb"),
            "-D",
            str(self.pg_data),
            "-U",
            DB_USER,
            f"--pwfile={password_file}",
            "--auth=scram-sha-256",
            "-E",
            "UTF8",
        ]
        try:
            done = subprocess.run(self._as_postgres(command), capture_output=True, text=True)
        finally:
            password_file.unlink()
        if done.returncode != 0:
            last = (done.stderr.strip().splitlines() or ["no message"])[-1]
            raise StackError(f"initdb failed: {last}")

    def _pg_connect(self, database: str = "postgres", timeout: int = 3) -> Any:
        import psycopg

        return psycopg.connect(
            host=HOST,
            port=self.state.ports["postgres"],
            user=DB_USER,
            password=self.credentials().db_password,
            dbname=database,
            connect_timeout=timeout,
        )

    def _pg_ready(self) -> bool:
        try:
            self._pg_connect().close()
            return True
        except Exception:  # psycopg.OperationalError and its kin: not answering (yet)
            return False

    def _create_databases(self) -> None:
        connection = self._pg_connect()
        connection.autocommit = True  # CREATE DATABASE cannot run in a transaction
        try:
            with connection.cursor() as cursor:
                for name in DATABASES:
                    cursor.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
                    if cursor.fetchone() is None:
                        cursor.execute(f'CREATE DATABASE "{name}"')
        finally:
            connection.close()

    # ---- MLflow, Prefect, workers --------------------------------------------------------

    def _mlflow_command(self) -> list[str]:
        return [
            sys.executable, "-m", "mlflow", "server",
            "--app-name", "basic-auth",
            "--backend-store-uri", self.db_url("mlflow"),
            # Artifacts through the server (mlflow-artifacts:/): clients need no storage
            # credentials, and the server checks each user's permission on them.
            "--artifacts-destination", str(self.root / "artifacts"),
            "--host", HOST,
            "--port", str(self.state.ports["mlflow"]),
            "--workers", "1",
        ]  # fmt: skip

    def _mlflow_env(self) -> dict[str, str]:
        config = self.root / "mlflow-auth.ini"  # no secret in it: they come from the env
        config.write_text(
            "[mlflow]\n"
            f"default_permission = {DEFAULT_PERMISSION}\n"
            f"database_uri = {self.db_url('mlflow_auth')}\n"
            f"admin_username = {ADMIN_USER}\n"
            "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
        )
        creds = self.credentials()
        return self._server_env(
            MLFLOW_AUTH_CONFIG_PATH=str(config),
            MLFLOW_AUTH_ADMIN_PASSWORD=creds.admin_password,
            MLFLOW_FLASK_SERVER_SECRET_KEY=creds.flask_secret,
            # Otherwise eight job-runner processes (MLflow's huey consumers) that tuneforge
            # never uses: about a minute of CPU on two cores at every start.
            MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false",
        )

    def _prefect_command(self) -> list[str]:
        port = str(self.state.ports["prefect"])
        return [sys.executable, "-m", "prefect", "server", "start", "--host", HOST, "--port", port]

    def _prefect_env(self) -> dict[str, str]:
        return self._server_env(
            PREFECT_HOME=str(self.root / "prefect"),
            PREFECT_API_DATABASE_CONNECTION_URL=self.db_url("prefect", "postgresql+asyncpg"),
            PREFECT_SERVER_API_AUTH_STRING=self.credentials().prefect_auth_string,
            # Leases on disk, so a restarted server still knows who holds a slot, and the
            # repossessor frees a killed run's slot (tuneforge/prefect_server.py says why).
            PREFECT_SERVER_CONCURRENCY_LEASE_STORAGE=LEASE_STORAGE,
            PREFECT_SERVER_SERVICES_REPOSSESSOR_LOOP_SECONDS=str(REPOSSESSOR_LOOP_S),
        )

    def _worker_command(self, index: int) -> list[str]:
        pool = self.state.pool
        name = f"{pool}-worker-{index}"
        return [sys.executable, "-m", "prefect", "worker", "start", "--pool", pool, "--name", name]

    def _worker_env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k != "PGPASSWORD"}
        env.update(self.client_env())
        env.setdefault("TUNEFORGE_HOME", self.state.project)  # deployments/prefect.yaml's pull
        env.setdefault("PREFECT_HOME", str(self.root / "worker-home"))
        if self.state.pool_limit:
            # The flow runs the pool allows at once share this machine's cores: each one
            # computing with all of them would slow every one several times over.
            share = max(1, (os.cpu_count() or 1) // self.state.pool_limit)
            env.setdefault("OMP_NUM_THREADS", str(share))
        return env

    def _ensure_pool(self) -> None:
        """The stack's process work pool, with its concurrency limit (None: unlimited)."""
        import anyio
        from prefect.client.orchestration import get_client
        from prefect.client.schemas.actions import WorkPoolCreate, WorkPoolUpdate
        from prefect.exceptions import ObjectNotFound
        from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_URL, temporary_settings

        async def ensure() -> None:
            async with get_client() as client:
                try:
                    await client.read_work_pool(self.state.pool)
                except ObjectNotFound:
                    await client.create_work_pool(
                        WorkPoolCreate(name=self.state.pool, type="process")
                    )
                await client.update_work_pool(
                    self.state.pool, WorkPoolUpdate(concurrency_limit=self.state.pool_limit)
                )

        settings = {
            PREFECT_API_URL: self.prefect_api_url,
            PREFECT_API_AUTH_STRING: self.credentials().prefect_auth_string,
        }
        with temporary_settings(updates=settings):
            anyio.run(ensure)

    # ---- status and down -----------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """Each service: running or not, and where."""
        if not self.state.ports:
            return {"root": str(self.root), "services": {}}
        services: dict[str, dict[str, Any]] = {
            "postgres": {
                "url": f"{HOST}:{self.state.ports['postgres']} ({', '.join(DATABASES)})",
                "running": self._pg_ready(),
            },
            "mlflow": {"url": self.mlflow_uri, "running": _http_ok(f"{self.mlflow_uri}/health")},
            "prefect": {
                "url": self.prefect_api_url,
                "running": _http_ok(f"{self.prefect_api_url}/health"),
            },
        }
        for name, pid in sorted(self.state.pids.items()):
            if name.startswith("worker-"):
                services[name] = {"url": f"pool {self.state.pool}", "running": _alive(pid)}
        for name, entry in services.items():
            entry["pid"] = self.state.pids.get(name)
        return {"root": str(self.root), "env": str(self.root / "env.sh"), "services": services}

    def _terminate(self, name: str) -> None:
        pid = self.state.pids.pop(name, None)
        if not _alive(pid):
            return
        try:
            os.killpg(pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + 20
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        if _alive(pid):
            os.killpg(pid, signal.SIGKILL)

    def down(self) -> dict[str, Any]:
        """Stops workers, servers, then PostgreSQL; the data stays for the next `up`."""
        for name in sorted(self.state.pids, key=lambda n: not n.startswith("worker-")):
            self._terminate(name)
        self._write_state()
        if (self.pg_data / "postmaster.pid").exists():
            command = [postgres_bin("pg_ctl"), "-D", str(self.pg_data), "-m", "fast", "-w", "stop"]
            subprocess.run(self._as_postgres(command), capture_output=True, text=True)
        return self.status()
