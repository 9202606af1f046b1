"""Writes the base job templates of the `gpu` work pools, derived from each worker's default.

    python deployments/work-pools/make_gpu_templates.py    # rewrites the two JSON files
    prefect work-pool create gpu --type kubernetes \
        --base-job-template deployments/work-pools/gpu-kubernetes.json
    prefect work-pool create gpu-docker --type docker \
        --base-job-template deployments/work-pools/gpu-docker.json

Starting from the installed worker's own default keeps every other field current; only the GPU
parts are ours. A test checks the committed files equal what this script produces and that
they render through the workers' own job-configuration classes.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent


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


TEMPLATES = {"gpu-kubernetes.json": kubernetes_template, "gpu-docker.json": docker_template}


def render(build: Any) -> str:
    return json.dumps(build(), indent=2, sort_keys=True) + "\n"


if __name__ == "__main__":
    for name, build in TEMPLATES.items():
        (HERE / name).write_text(render(build))
        print(f"wrote {HERE / name}")
