"""Writes the base job templates of the `gpu` work pools, derived from each worker's default,
and the headless Service the multi-node pool's Jobs need.

    python deployments/work-pools/make_gpu_templates.py    # rewrites every file it owns
    prefect work-pool create gpu --type kubernetes \
        --base-job-template deployments/work-pools/gpu-kubernetes.json
    prefect work-pool create gpu-docker --type docker \
        --base-job-template deployments/work-pools/gpu-docker.json
    prefect work-pool create gpu-multinode --type kubernetes \
        --base-job-template deployments/work-pools/gpu-kubernetes-multinode.json
    kubectl apply -n NAMESPACE -f deployments/work-pools/multinode-service.yaml

Starting from the installed worker's own default keeps every other field current; only the GPU
and multi-node parts are ours. The multi-node template and its Service come from the same
constants, so the names they share cannot drift. A test checks the committed files equal what
this script produces and that they render through the workers' own job-configuration classes.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

from tuneforge.training.multinode import LOCAL_ADDR_ENV, NODES_ENV, PROCS_ENV, RENDEZVOUS_ENV

HERE = Path(__file__).resolve().parent
# Shared by the multi-node template and multinode-service.yaml (defaults of its variables).
SERVICE_NAME = "tuneforge-nodes"
POD_LABEL = {"tuneforge/multinode": "true"}
RENDEZVOUS_PORT = 29400  # torchrun's default c10d port
SERVICE_FILE = "multinode-service.yaml"


def kubernetes_template() -> dict[str, Any]:
    """Kubernetes job requesting `gpu_count` NVIDIA GPUs on GPU nodes (selector, toleration)."""
    from prefect_kubernetes.worker import KubernetesWorker

    template = copy.deepcopy(KubernetesWorker.get_default_base_job_template())
    pod = template["job_configuration"]["job_manifest"]["spec"]["template"]["spec"]
    pod["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] = "{{ gpu_count }}"
    pod["nodeSelector"] = "{{ node_selector }}"
    pod["tolerations"] = [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    variables = template["variables"]["properties"]
    variables["gpu_count"] = {
        "title": "GPUs",
        "description": "NVIDIA GPUs per flow run (nvidia.com/gpu limit).",
        "type": "integer",
        "default": 1,
    }
    variables["node_selector"] = {
        "title": "Node selector",
        "description": "Labels of the GPU nodes to schedule on.",
        "type": "object",
        "default": {"nvidia.com/gpu.present": "true"},
    }
    variables["image"]["default"] = "tuneforge-gpu:latest"
    return template


def docker_template() -> dict[str, Any]:
    """Docker container with every GPU of the host (`docker run --gpus all`)."""
    from prefect_docker.worker import DockerWorker

    template = copy.deepcopy(DockerWorker.get_default_base_job_template())
    variables = template["variables"]["properties"]
    variables["container_create_kwargs"]["default"] = {
        "device_requests": [{"driver": "nvidia", "count": -1, "capabilities": [["gpu"]]}]
    }
    variables["image"]["default"] = "tuneforge-gpu:latest"
    return template


def kubernetes_multinode_template() -> dict[str, Any]:
    """An Indexed Job of `num_nodes` GPU pods: pod 0 runs the flow run, the others join its
    training (`python -m tuneforge.training.multinode`), meeting at pod 0 through the headless
    Service."""
    template = kubernetes_template()
    config = template["job_configuration"]
    job = config["job_manifest"]["spec"]
    job["completionMode"] = "Indexed"  # pods get JOB_COMPLETION_INDEX and hostname JOB-INDEX
    job["completions"] = "{{ num_nodes }}"
    job["parallelism"] = "{{ num_nodes }}"  # all at once: training needs every node
    pod_template = job["template"]
    pod_template["metadata"] = {"labels": dict(POD_LABEL)}
    pod = pod_template["spec"]
    # The default's pod-level completions/parallelism (1) mean nothing to Kubernetes, but the
    # worker's manifest validation requires them, so they stay.
    pod["subdomain"] = "{{ headless_service }}"  # pod 0 is JOB-0.SERVICE to the others
    pod["volumes"] = [
        {"name": "shared", "persistentVolumeClaim": {"claimName": "{{ shared_volume_claim }}"}},
        # NCCL between the GPUs of one pod goes through /dev/shm; the runtime's 64 MB is
        # too small for it.
        {"name": "dshm", "emptyDir": {"medium": "Memory"}},
    ]
    container = pod["containers"][0]
    # The worker keeps filling `args` with the flow-run command; this runs it on pod 0.
    container["command"] = ["python", "-m", "tuneforge.training.multinode", "--"]
    container["volumeMounts"] = [
        {"name": "shared", "mountPath": "{{ shared_path }}"},
        # Its own mount so the directory exists before anything starts (TMPDIR must exist,
        # or Python silently falls back to /tmp); the kubelet creates the subPath.
        {"name": "shared", "mountPath": "{{ shared_path }}/tmp", "subPath": "tmp"},
        {"name": "dshm", "mountPath": "/dev/shm"},
    ]
    # Kubernetes wants env values as strings, and a lone "{{ num_nodes }}" renders as an int;
    # values in the job configuration's env are made strings by the worker (and a
    # deployment's `env` merges over them), so plain values go there. The manifest's list
    # keeps what Kubernetes itself resolves; the worker prepends its env to it, and $(JOB_NAME)
    # expands only in variables listed after JOB_NAME.
    config["env"] = {
        NODES_ENV: "{{ num_nodes }}",
        PROCS_ENV: "{{ gpu_count }}",
        # train_stage's work directory (data, base model, tuned weights) is a tempfile
        # directory, and every node reads it: on the shared volume.
        "TMPDIR": "{{ shared_path }}/tmp",
        # Hub base models: every node loads the snapshot node 0 resolved, by its path.
        "HF_HOME": "{{ shared_path }}/huggingface",
    }
    container["env"] = [
        # The legacy label: batch.kubernetes.io/job-name exists only from Kubernetes 1.27.
        {
            "name": "JOB_NAME",
            "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['job-name']"}},
        },
        {
            "name": RENDEZVOUS_ENV,
            "value": "$(JOB_NAME)-0.{{ headless_service }}:{{ rendezvous_port }}",
        },
        # The pod IP needs no DNS record: torchrun publishes it to the other nodes.
        {"name": LOCAL_ADDR_ENV, "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
    ]
    variables = template["variables"]["properties"]
    variables["gpu_count"] = {
        **variables["gpu_count"],
        "description": (
            "NVIDIA GPUs per pod (nvidia.com/gpu limit), one training process each "
            f"({PROCS_ENV}): train.num_processes must equal it."
        ),
    }
    variables["num_nodes"] = {
        "title": "Nodes",
        "description": (
            "Pods of the Indexed Job: pod 0 runs the flow run, the others join its training "
            f"({NODES_ENV}): train.num_nodes must equal it."
        ),
        "type": "integer",
        "minimum": 1,
        "default": 2,
    }
    variables["headless_service"] = {
        "title": "Headless service",
        "description": (
            f"Name of the headless Service selecting the pods ({SERVICE_FILE}); the pods' "
            "subdomain, so pod 0 is JOB-0.SERVICE to the others."
        ),
        "type": "string",
        "default": SERVICE_NAME,
    }
    variables["rendezvous_port"] = {
        "title": "Rendezvous port",
        "description": "Port of pod 0's c10d store, where the nodes meet.",
        "type": "integer",
        "minimum": 1,
        "maximum": 65535,
        "default": RENDEZVOUS_PORT,
    }
    variables["shared_volume_claim"] = {
        "title": "Shared volume claim",
        "description": (
            "ReadWriteMany PersistentVolumeClaim every pod mounts: the base model, data, "
            "checkpoints and tuned weights must be readable by every node at the same path."
        ),
        "type": "string",
        "default": "tuneforge-shared",
    }
    variables["shared_path"] = {
        "title": "Shared path",
        "description": (
            "Where the shared volume is mounted; TMPDIR is PATH/tmp and HF_HOME "
            "PATH/huggingface. Set the run config's output_dir below it for shared checkpoints."
        ),
        "type": "string",
        "default": "/shared",
    }
    return template


def multinode_service() -> dict[str, Any]:
    """The headless Service giving the multi-node Jobs' pods DNS names (JOB-INDEX.SERVICE)."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": SERVICE_NAME},
        "spec": {
            "clusterIP": "None",
            "selector": dict(POD_LABEL),
            # Records as soon as a pod has an IP: the joiners look pod 0 up while it starts.
            "publishNotReadyAddresses": True,
            "ports": [{"name": "rendezvous", "port": RENDEZVOUS_PORT, "protocol": "TCP"}],
        },
    }


SERVICE_HEADER = f"""\
# Headless Service of the gpu-multinode work pool (gpu-kubernetes-multinode.json): its pods
# take this name as their subdomain, so pod 0 of Job JOB is JOB-0.{SERVICE_NAME}. One Service
# serves every multi-node Job in its namespace (pod host names are unique per Job).
#   kubectl apply -n NAMESPACE -f deployments/work-pools/{SERVICE_FILE}
# Written by make_gpu_templates.py; edit the script, not this file.
"""

TEMPLATES = {
    "gpu-kubernetes.json": kubernetes_template,
    "gpu-kubernetes-multinode.json": kubernetes_multinode_template,
    "gpu-docker.json": docker_template,
}
FILES = [*TEMPLATES, SERVICE_FILE]


def render(name: str) -> str:
    """The text of the file `name` (one of FILES) as this script writes it."""
    if name == SERVICE_FILE:
        import yaml

        return SERVICE_HEADER + yaml.safe_dump(multinode_service(), sort_keys=False)
    return json.dumps(TEMPLATES[name](), indent=2, sort_keys=True) + "\n"


if __name__ == "__main__":
    for name in FILES:
        (HERE / name).write_text(render(name))
        print(f"wrote {HERE / name}")
