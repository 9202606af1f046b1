"""Training past one machine with torch's own elastic launcher (torchrun) and c10d rendezvous.

Every node runs one launcher with the same `--nnodes`, `--nproc_per_node` and rendezvous
endpoint HOST:PORT; the launchers meet there (node 0 hosts the c10d store), torch numbers the
processes, and the processes form one DDP/FSDP group (NCCL on GPUs, gloo on CPUs).

- **Node 0** is wherever the training task runs: `launch.train_in_processes` starts it with the
  run's spec (paths, config) when `train.num_nodes` > 1.
- **Every other node** runs `python -m tuneforge.training.multinode` (below): it waits until
  node 0's store answers, then starts a launcher without a spec; its processes receive the
  spec from node 0's over the process group (`worker.py`), so a joining node needs no
  knowledge of the run, only where to meet.

On Kubernetes the multi-node work pool (deployments/work-pools/) runs the flow run as an
Indexed Job: pod 0 runs the flow, pods 1..N-1 run this module as joiners, and a headless
service gives pod 0 the stable name the others meet at (docs/multi-node.md).

    # on pods of a multi-node Job: index 0 runs COMMAND, the others join its training
    python -m tuneforge.training.multinode -- prefect flow-run execute
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

# Set by the multi-node job template on every pod; node 0 reads them when the config does not
# say (train.rendezvous), and checks they agree with train.num_nodes / train.num_processes.
RENDEZVOUS_ENV = "TUNEFORGE_RENDEZVOUS"
NODES_ENV = "TUNEFORGE_NUM_NODES"
PROCS_ENV = "TUNEFORGE_PROCS_PER_NODE"
# How long a joining node waits for node 0 (which first loads, validates and splits the data,
# and resolves the base model) before giving up; Kubernetes then retries the pod.
JOIN_TIMEOUT_ENV = "TUNEFORGE_JOIN_TIMEOUT_S"
# The address the other nodes reach this one at (torchrun's --local_addr), where its host name
# does not resolve for them; torch also numbers the nodes in the order of these addresses.
LOCAL_ADDR_ENV = "TUNEFORGE_LOCAL_ADDR"
JOIN_TIMEOUT_S = 1800.0
RDZV_ID = "tuneforge"  # one store per job (node 0's), so one id serves every run
TRAIN_MODULE = f"{__package__}.worker"  # tuneforge.training.worker
# The training task's pid, given to a training process started alone (not by torchrun): it
# ends when that task's process does.
PARENT_PID = "TUNEFORGE_PARENT_PID"


def launcher_command(
    *,
    num_nodes: int,
    procs_per_node: int,
    rendezvous: str | None,
    spec_path: str | None,
) -> list[str]:
    """The torchrun command of one node: node 0's with `spec_path`, a joiner's without.

    One node: `--standalone` (a private store on a free port). More: c10d rendezvous at
    `rendezvous`, hosted by the node given the spec."""
    command = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={procs_per_node}"]
    if num_nodes == 1:
        command.append("--standalone")
    else:
        if not rendezvous:
            raise ValueError("multi-node training needs a rendezvous endpoint HOST:PORT")
        host = int(spec_path is not None)
        command += [
            f"--nnodes={num_nodes}",
            "--rdzv_backend=c10d",
            f"--rdzv_endpoint={rendezvous}",
            f"--rdzv_id={RDZV_ID}",
            # is_host says who serves the store instead of guessing from host names (two
            # "nodes" on one machine both match 127.0.0.1).
            f"--rdzv_conf=is_host={host},join_timeout={int(join_timeout_s())}",
        ]
        if os.environ.get(LOCAL_ADDR_ENV):
            command.append(f"--local_addr={os.environ[LOCAL_ADDR_ENV]}")
    return [*command, "-m", TRAIN_MODULE, *([spec_path] if spec_path else [])]


def node_zero_rendezvous(num_nodes: int, procs_per_node: int, configured: str | None) -> str:
    """Where node 0 serves the rendezvous: the config's endpoint, else the job template's.

    One line naming what is missing or disagrees, before any process starts."""
    expected = ((NODES_ENV, num_nodes, "num_nodes"), (PROCS_ENV, procs_per_node, "num_processes"))
    for env, wanted, key in expected:
        found = os.environ.get(env)
        if found and found != str(wanted):
            raise ValueError(f"train.{key}={wanted} but this job runs {env}={found}")
    endpoint = configured or os.environ.get(RENDEZVOUS_ENV)
    if not endpoint:
        raise ValueError(
            f"train.num_nodes={num_nodes} needs a rendezvous endpoint: set train.rendezvous "
            f"to HOST:PORT of this node, or run on the multi-node work pool (it sets "
            f"{RENDEZVOUS_ENV})"
        )
    return endpoint


def join_timeout_s() -> float:
    return float(os.environ.get(JOIN_TIMEOUT_ENV, JOIN_TIMEOUT_S))


def wait_for_endpoint(endpoint: str, timeout_s: float, poll_s: float = 2.0) -> None:
    """Returns once HOST:PORT accepts a TCP connection (node 0's store is up); raises
    TimeoutError after `timeout_s`. torchrun itself gives up on an absent store after its
    read timeout (60 s), less than node 0 may take to reach training."""
    host, port = endpoint.rsplit(":", 1)
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with socket.create_connection((host, int(port)), timeout=poll_s):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"no rendezvous at {endpoint} after {timeout_s:.0f} s") from None
            time.sleep(poll_s)


def join() -> int:
    """Runs this node's launcher as a joiner; returns torchrun's exit status."""
    missing = [e for e in (RENDEZVOUS_ENV, NODES_ENV, PROCS_ENV) if not os.environ.get(e)]
    if missing:
        raise SystemExit(f"{__spec__.name}: a joining node needs {', '.join(missing)} set")
    endpoint = os.environ[RENDEZVOUS_ENV]
    wait_for_endpoint(endpoint, join_timeout_s())
    command = launcher_command(
        num_nodes=int(os.environ[NODES_ENV]),
        procs_per_node=int(os.environ[PROCS_ENV]),
        rendezvous=endpoint,
        spec_path=None,
    )
    return subprocess.run(command, check=False).returncode


def main(argv: list[str]) -> int:
    """Pod entry of a multi-node Job: index 0 runs `argv` (the flow run), the rest join."""
    command = argv[1:] if argv[:1] == ["--"] else argv
    if int(os.environ.get("JOB_COMPLETION_INDEX", "0")) == 0:
        if not command:
            raise SystemExit(f"{__spec__.name}: node 0 needs the command to run after --")
        os.execvp(command[0], command)
    return join()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
