"""The feedback loop's routing: a pushed file's schema (a label on the `tuneforge.data.pushed`
event) picks exactly one data-triggered deployment, matched the way Prefect matches it."""

from __future__ import annotations

import pytest
import yaml
from prefect.events.schemas.events import Resource, ResourceSpecification

from tests.conftest import REPO
from tuneforge import lineage
from tuneforge.config import load_config
from tuneforge.data_schemas import SCHEMAS
from tuneforge.plugins.discovery import strategy_info


def _triggered() -> dict[str, tuple[ResourceSpecification, dict]]:
    spec = yaml.safe_load((REPO / "deployments" / "prefect.yaml").read_text())
    return {
        d["name"]: (ResourceSpecification(t["match"]), d["parameters"])
        for d in spec["deployments"]
        for t in d.get("triggers", [])
        if lineage.DATA_PUSHED in t.get("expect", [])
    }


@pytest.mark.parametrize(
    ("schema", "deployment", "strategy"),
    [(name, "on-new-data", None) for name in SCHEMAS if name not in ("preference", "feedback")]
    + [("preference", "on-new-preferences", "dpo"), ("feedback", "on-new-feedback", "kto")],
)
def test_a_pushed_file_starts_the_deployment_for_its_schema(schema, deployment, strategy):
    resource = Resource(lineage.dataset_resource("/data/new.jsonl", "new.jsonl", schema))

    matching = [name for name, (match, _) in _triggered().items() if match.matches(resource)]

    assert matching == [deployment]
    _, parameters = _triggered()[deployment]
    config = load_config(str(REPO / parameters["preset"]), parameters.get("overrides", []))
    if strategy:  # the preset trains that data from the champion
        assert config.train.strategy == strategy
        assert config.model.source.endswith("@champion")
    else:
        assert not strategy_info(config.train.strategy).cls.capabilities.preference
