"""Shared fixtures: an isolated environment, the bundled data, a tiny model, and real servers.

The environment is set before Prefect or MLflow is imported: Prefect reads PREFECT_HOME at
import time, and both would otherwise write under the user's home directory.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

_SANDBOX = Path(tempfile.mkdtemp(prefix="tuneforge-tests-"))
os.environ.update(
    {
        "PREFECT_HOME": str(_SANDBOX / "prefect"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_LOGGING_LEVEL": "WARNING",
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "DO_NOT_TRACK": "true",
        "HF_HUB_OFFLINE": "1",
        "HF_HOME": str(
            _SANDBOX / "huggingface"
        ),  # no test may reach the hub; the hub code path fails fast instead
        "TOKENIZERS_PARALLELISM": "false",
        "MLFLOW_TRACKING_URI": f"sqlite:///{_SANDBOX / 'default-mlflow.db'}",
        # MLflow's server otherwise starts eight job-runner processes (huey consumers) that
        # tuneforge never uses: about a minute of CPU on two cores, every server start.
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
        # Prefect's temporary servers (a few unit tests' clients start one) get 90 s, not 20:
        # on two busy cores 20 s is not always enough.
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "90",
    }
)
os.environ.pop("PREFECT_API_URL", None)

import pytest  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
PRESET = REPO / "deployments" / "presets" / "tiny-cpu.yaml"
BUNDLED_DATA = REPO / "data" / "instructions.jsonl"


# Short test runs (a few dozen steps, a dozen eval rows) answer few rows exactly: the preset's
# promotion gate against the base (registry.min_correct, registry.max_p_value) is switched off
# where promotion is not what a test is about.
NO_GATE = ("registry.min_correct=0", "registry.max_p_value=null")


def set_args(*settings: str) -> list[str]:
    """`--set KEY=VALUE` arguments of a `tuneforge run` command line, one pair per setting."""
    return [arg for setting in settings for arg in ("--set", setting)]


def cache_hub_checkpoint(checkpoint: Path, repo_id: str, commit: str = "a1" * 20) -> Path:
    """Puts a checkpoint into the Hugging Face cache as a download of `repo_id` at `commit`
    would (blobs named by content hash, a snapshot of links to them, refs/main), and returns
    the snapshot directory. With HF_HUB_OFFLINE=1 (the tests' setting) hub code reads it."""
    import hashlib

    from huggingface_hub import constants

    repo = Path(constants.HF_HUB_CACHE) / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / commit
    (repo / "blobs").mkdir(parents=True, exist_ok=True)
    snapshot.mkdir(parents=True, exist_ok=True)
    for file in checkpoint.iterdir():
        blob = repo / "blobs" / hashlib.sha256(file.read_bytes()).hexdigest()
        shutil.copyfile(file, blob)
        (snapshot / file.name).unlink(missing_ok=True)
        (snapshot / file.name).symlink_to(os.path.relpath(blob, snapshot))
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(commit)
    return snapshot


# Qwen2's chat format (ChatML): each turn between <|im_start|>ROLE and <|im_end|>, the answer
# ending at <|im_end|>, the instruct models' end-of-sequence token.
CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def qwen2_checkpoint(out: Path, records: list[dict], **shape: int) -> Path:
    """A random-init Qwen2 checkpoint (default: 2 small layers but Qwen2.5's whole 151,936-token
    vocabulary and tied embeddings) with a locally trained tokenizer carrying ChatML."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from tuneforge.models import train_tokenizer
    from tuneforge.prompts import render_prompt, split_turns

    texts = [render_prompt(split_turns(r)[0], None) + split_turns(r)[1] for r in records]
    tokenizer = train_tokenizer(texts, vocab_size=600)
    tokenizer.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    tokenizer.eos_token, tokenizer.chat_template = "<|im_end|>", CHATML
    size = {
        "hidden_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "intermediate_size": 128,
        "vocab_size": 151_936,
        **shape,
    }
    config = Qwen2Config(
        **size,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    torch.manual_seed(0)
    Qwen2ForCausalLM(config).to(torch.bfloat16).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    shutil.rmtree(_SANDBOX, ignore_errors=True)


@pytest.fixture(autouse=True)
def _default_tracking_uri_restored():
    """`mlflow.set_tracking_uri` (tuneforge.tracking.resolve_tracking_uri calls it) exports
    MLFLOW_TRACKING_URI: without this, one test's (since stopped) server would become every
    later test's default, and whether a test passes would depend on which ran before it."""
    before = os.environ.get("MLFLOW_TRACKING_URI")
    yield
    if os.environ.get("MLFLOW_TRACKING_URI") != before:
        import mlflow

        mlflow.set_tracking_uri(before)  # None unsets it again


@pytest.fixture(scope="session")
def bundled_records() -> list[dict]:
    """The bundled dataset, validated into canonical records."""
    from tuneforge.data.reading import read_rows
    from tuneforge.data.validation import validate_rows

    valid, rejected = validate_rows(read_rows(str(BUNDLED_DATA)), max_chars=2000)
    assert not rejected
    return valid


@pytest.fixture(scope="session")
def tiny_model_dir(bundled_records: list[dict], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A freshly initialised tiny model (random weights) with its tokenizer; do not modify."""
    from tuneforge.models import TinyModelConfig, build_tiny_model

    cfg = TinyModelConfig(hidden_size=64, num_layers=2, num_heads=4, intermediate_size=128)
    return build_tiny_model(cfg, bundled_records, tmp_path_factory.mktemp("tiny") / "base")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def prefect_harness():
    """One real, temporary Prefect API server for the whole session (never nest harnesses)."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=90):
        yield


class ServerProcess:
    """A real server in its own process group, that a test can stop and start again on the
    same port and the same storage: an outage, a restart."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.port = _free_port()
        self.proc: subprocess.Popen | None = None
        self.starts = 0

    def command(self) -> list[str]:
        raise NotImplementedError

    health_url = ""
    env: dict[str, str] | None = None

    def start(self, timeout_s: float = 120) -> None:
        self.starts += 1
        log_path = self.root / f"server-{self.starts}.log"
        with log_path.open("w") as log:
            self.proc = subprocess.Popen(
                self.command(),
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: uvicorn runs as a child
            )
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                with urllib.request.urlopen(self.health_url, timeout=2) as response:
                    if response.status == 200:
                        return
            except OSError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"{self.command()[2]} did not start: {log_path.read_text()}")
            time.sleep(0.3)

    def freeze(self) -> None:
        """Stops the server's processes (SIGSTOP): connections are accepted, never answered."""
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGSTOP)

    def thaw(self) -> None:
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGCONT)

    def stop(self) -> None:
        """Terminates the server and its children, and waits until nothing listens."""
        if self.proc is None:
            return
        os.killpg(self.proc.pid, signal.SIGCONT)  # a frozen server cannot handle SIGTERM
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        self.proc = None
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
            except OSError:
                return
            time.sleep(0.2)
        raise RuntimeError(f"the server on port {self.port} still answers after stop")


class MlflowServerProcess(ServerProcess):
    """`mlflow server` with a SQLite backend and a local artifact root."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.uri = f"http://127.0.0.1:{self.port}"
        self.health_url = f"{self.uri}/health"

    def command(self) -> list[str]:
        return [
            sys.executable,
            "-m",
            "mlflow",
            "server",
            "--backend-store-uri",
            f"sqlite:///{self.root / 'mlflow.db'}",
            "--artifacts-destination",
            str(self.root / "artifacts"),
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--workers",
            "1",
        ]


class PrefectServerProcess(ServerProcess):
    """`prefect server start` on a SQLite file, with Prefect's default (in-memory) lease
    storage unless `settings` say otherwise."""

    def __init__(self, root: Path, **settings: str) -> None:
        super().__init__(root)
        self.api_url = f"http://127.0.0.1:{self.port}/api"
        self.health_url = f"{self.api_url}/health"
        self.env = {
            **os.environ,
            "PREFECT_HOME": str(root / "prefect-home"),
            "PREFECT_API_DATABASE_CONNECTION_URL": f"sqlite+aiosqlite:///{root / 'prefect.db'}",
            "PREFECT_UI_ENABLED": "false",
            "PREFECT_LOGGING_LEVEL": "INFO",
            **settings,
        }
        self.env.pop("PREFECT_API_URL", None)

    def command(self) -> list[str]:
        address = ["--host", "127.0.0.1", "--port", str(self.port)]
        return [sys.executable, "-m", "prefect", "server", "start", *address]


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory):
    """A real `mlflow server` on loopback (SQLite backend, local artifact store); yields its URI."""
    server = MlflowServerProcess(tmp_path_factory.mktemp("mlflow-server"))
    server.start()
    yield server.uri
    server.stop()


@pytest.fixture(scope="module")
def restartable_mlflow_server(tmp_path_factory: pytest.TempPathFactory):
    """A started `MlflowServerProcess` of this module's own (each test may stop, freeze or
    restart it, and leaves it running); stopped at the end of the module."""
    server = MlflowServerProcess(tmp_path_factory.mktemp("mlflow-server"))
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def stack():
    """The shared stack (tuneforge/stack.py) on free ports: PostgreSQL, MLflow with basic auth
    on it, Prefect's server on it behind an auth string; no workers (tests start their own).
    Its folder is one the `postgres` user can reach when the tests run as root."""
    from tuneforge.stack import Stack

    root = Path(tempfile.mkdtemp(prefix="tuneforge-stack-"))
    root.chmod(0o755)
    stack = Stack(root)
    try:
        stack.up(workers=0, ports={"postgres": 0, "mlflow": 0, "prefect": 0}, project=REPO)
        yield stack
    finally:
        stack.down()
        shutil.rmtree(root, ignore_errors=True)
