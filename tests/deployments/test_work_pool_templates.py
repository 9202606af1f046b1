"""GPU work-pool templates render through the Kubernetes and Docker workers' own code."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import re
import uuid

import pytest
import yaml

from tests.conftest import REPO
from tuneforge.training import multinode

POOLS = REPO / "deployments" / "work-pools"
COMMITTED = [
    "gpu-kubernetes.json",
    "gpu-kubernetes-multinode.json",
    "gpu-docker.json",
    "multinode-service.yaml",
]
pytest.importorskip("prefect_kubernetes")
pytest.importorskip("prefect_docker")


def _generator():
    spec = importlib.util.spec_from_file_location(
        "make_gpu_templates", POOLS / "make_gpu_templates.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name", COMMITTED)
def test_committed_files_are_what_the_generator_writes(name):
    generator = _generator()
    assert sorted(generator.FILES) == sorted(COMMITTED)
    assert (POOLS / name).read_text() == generator.render(name)


def test_kubernetes_template_requests_gpus_on_gpu_nodes(prefect_harness):
    # Rendering takes a Prefect client: the session's test server, not a temporary one.
    from prefect_kubernetes.worker import KubernetesWorkerJobConfiguration

    template = json.loads((POOLS / "gpu-kubernetes.json").read_text())
    config = asyncio.run(
        KubernetesWorkerJobConfiguration.from_template_and_values(
            template, {"gpu_count": 2, "image": "registry.example/tuneforge-gpu:1"}
        )
    )
    pod = config.job_manifest["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 2
    assert container["image"] == "registry.example/tuneforge-gpu:1"
    assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod[
        "tolerations"
    ]


def test_docker_template_hands_the_container_every_gpu():
    from prefect_docker.worker import DockerWorkerJobConfiguration

    template = json.loads((POOLS / "gpu-docker.json").read_text())
    config = asyncio.run(DockerWorkerJobConfiguration.from_template_and_values(template, {}))
    assert config.image == "tuneforge-gpu:latest"
    requests = config.container_create_kwargs["device_requests"]
    assert requests == [{"driver": "nvidia", "count": -1, "capabilities": [["gpu"]]}]


def _multinode_manifest(values):
    """The Job the Kubernetes worker would submit for a flow run on the multi-node pool."""
    from prefect.client.schemas.objects import FlowRun
    from prefect_kubernetes.worker import KubernetesWorkerJobConfiguration

    template = json.loads((POOLS / "gpu-kubernetes-multinode.json").read_text())
    config = asyncio.run(
        KubernetesWorkerJobConfiguration.from_template_and_values(template, values)
    )
    flow_run = FlowRun(flow_id=uuid.uuid4(), name="clever-fox")
    config.prepare_for_flow_run(flow_run)
    return config.job_manifest, flow_run


def _as_kubernetes_sets(env, fields):
    """A container's environment as Kubernetes sets it: `valueFrom` from the pod's `fields`,
    `$(NAME)` expanded from variables listed before it (later ones are not expanded)."""
    resolved = {}

    def expand(reference):
        return resolved.get(reference[1], reference[0])

    for entry in env:
        if "valueFrom" in entry:
            resolved[entry["name"]] = fields[entry["valueFrom"]["fieldRef"]["fieldPath"]]
        else:
            resolved[entry["name"]] = re.sub(r"\$\((\w+)\)", expand, entry["value"])
    return resolved


def test_multinode_template_runs_an_indexed_job_whose_pods_meet_at_pod_zero(
    prefect_harness, monkeypatch
):
    manifest, flow_run = _multinode_manifest(
        {"num_nodes": 4, "gpu_count": 8, "env": {"HF_HUB_OFFLINE": "1"}}
    )
    service = yaml.safe_load((POOLS / "multinode-service.yaml").read_text())
    job = manifest["spec"]
    assert job["completionMode"] == "Indexed"
    assert job["completions"] == job["parallelism"] == 4
    pod = job["template"]["spec"]
    assert service["spec"]["clusterIP"] == "None"
    assert pod["subdomain"] == service["metadata"]["name"]
    assert service["spec"]["selector"].items() <= job["template"]["metadata"]["labels"].items()

    container = pod["containers"][0]
    assert [*container["command"], *container["args"]] == [
        *("python", "-m", "tuneforge.training.multinode", "--"),
        *("prefect", "flow-run", "execute"),
    ]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 8
    env = container["env"]
    names = [entry["name"] for entry in env]
    assert names.index("JOB_NAME") < names.index(multinode.RENDEZVOUS_ENV)
    # Kubernetes refuses env values that are not strings.
    assert all(isinstance(entry["value"], str) for entry in env if "value" in entry)
    port = service["spec"]["ports"][0]["port"]
    pod_env = _as_kubernetes_sets(
        env, {"metadata.labels['job-name']": "clever-fox-x7k2p", "status.podIP": "10.0.3.7"}
    )
    assert (
        pod_env[multinode.RENDEZVOUS_ENV]
        == f"clever-fox-x7k2p-0.{service['metadata']['name']}:{port}"
    )
    assert pod_env[multinode.NODES_ENV] == "4"
    assert pod_env[multinode.PROCS_ENV] == "8"
    assert pod_env["PREFECT__FLOW_RUN_ID"] == str(flow_run.id)
    assert pod_env["HF_HUB_OFFLINE"] == "1"  # a deployment's env still reaches the pods

    # What tuneforge makes of that environment: node 0 serves the rendezvous it names, and a
    # joiner's launcher meets it there as one of 4 nodes of 8 processes, at its pod IP.
    for name in (multinode.RENDEZVOUS_ENV, multinode.NODES_ENV, multinode.PROCS_ENV):
        monkeypatch.setenv(name, pod_env[name])
    monkeypatch.setenv(multinode.LOCAL_ADDR_ENV, pod_env[multinode.LOCAL_ADDR_ENV])
    endpoint = multinode.node_zero_rendezvous(4, 8, None)
    assert endpoint == pod_env[multinode.RENDEZVOUS_ENV]
    joiner = multinode.launcher_command(
        num_nodes=4, procs_per_node=8, rendezvous=endpoint, spec_path=None
    )
    for arg in ("--nnodes=4", "--nproc_per_node=8", f"--rdzv_endpoint={endpoint}"):
        assert arg in joiner
    assert "--local_addr=10.0.3.7" in joiner


def test_multinode_pods_share_one_volume_for_work_files_and_model_caches(prefect_harness):
    manifest, _ = _multinode_manifest(
        {"shared_volume_claim": "ml-shared", "shared_path": "/mnt/ml"}
    )
    pod = manifest["spec"]["template"]["spec"]
    volumes = {volume["name"]: volume for volume in pod["volumes"]}
    container = pod["containers"][0]
    mounts = {mount["mountPath"]: mount for mount in container["volumeMounts"]}
    shared = mounts["/mnt/ml"]["name"]
    assert volumes[shared]["persistentVolumeClaim"] == {"claimName": "ml-shared"}
    # train_stage's work directory (tempfile) and the hub cache land on it; TMPDIR has a
    # mount of its own so it exists before Python looks (else tempfile uses /tmp).
    assert mounts["/mnt/ml/tmp"] == {"name": shared, "mountPath": "/mnt/ml/tmp", "subPath": "tmp"}
    env = {entry["name"]: entry.get("value") for entry in container["env"]}
    assert env["TMPDIR"] == "/mnt/ml/tmp"
    assert env["HF_HOME"] == "/mnt/ml/huggingface"
