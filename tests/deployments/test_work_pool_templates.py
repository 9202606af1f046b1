"""GPU work-pool templates render through the Kubernetes and Docker workers' own code."""

from __future__ import annotations

import asyncio
import importlib.util
import json

import pytest

from tests.conftest import REPO

POOLS = REPO / "deployments" / "work-pools"
pytest.importorskip("prefect_kubernetes")
pytest.importorskip("prefect_docker")


def _generator():
    spec = importlib.util.spec_from_file_location(
        "make_gpu_templates", POOLS / "make_gpu_templates.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name", ["gpu-kubernetes.json", "gpu-docker.json"])
def test_committed_templates_are_what_the_generator_writes(name):
    generator = _generator()
    assert (POOLS / name).read_text() == generator.render(generator.TEMPLATES[name])


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
