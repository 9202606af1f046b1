"""The plugin's own tests, on tuneforge's public test kit."""

from tuneforge_jsonvalid.metric import JsonValid

from tuneforge.plugins.testing import check_evaluator


def test_json_valid_keeps_the_contract():
    check_evaluator(JsonValid)
    check_evaluator(JsonValid, {"required_keys": ["name"]})


def test_scores_json_and_required_keys():
    plain, keyed = (
        JsonValid(JsonValid.Settings()),
        JsonValid(JsonValid.Settings(required_keys=["a"])),
    )
    assert plain.score("", '{"a": 1}', {}) == 1.0 and plain.score("", "12", {}) == 1.0
    assert plain.score("", "cold", {}) == 0.0
    assert keyed.score("", '{"a": 1}', {}) == 1.0 and keyed.score("", "12", {}) == 0.0
