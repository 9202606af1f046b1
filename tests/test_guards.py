"""Guards (`registry.guards`): what a new version must not lose, checked against the champion
(else the base) with a paired sign test on the same rows; refused in one line when they name a
metric nobody scores; and replay (`data.replay`), the remedy, sampling the parent's rows."""

from __future__ import annotations

import pytest

from tests.conftest import BUNDLED_DATA, PRESET, REPO
from tuneforge.config import ConfigError, load_config
from tuneforge.promotion import GuardResult, check_guards, sign_test_p

SUITE = REPO / "deployments" / "benchmarks"
BENCH = "bench.guard_antonym.acc"


def _bench_rows(values: list[float], higher: bool = True) -> list[dict]:
    return [
        {"metric": BENCH, "doc_id": i, "value": v, "higher_is_better": higher}
        for i, v in enumerate(values)
    ]


def test_a_benchmark_guard_fails_on_a_drop_beyond_its_limit_with_the_paired_test():
    champion = [1.0] * 10
    tuned = [1.0] * 4 + [0.0] * 6
    (guard,) = check_guards(
        {BENCH: 0.1},
        {BENCH: 0.4},
        {BENCH: 1.0},
        "champion v1",
        _bench_rows(tuned),
        _bench_rows(champion),
    )
    assert not guard.passed and guard.drop == pytest.approx(0.6)
    assert (guard.worse, guard.better) == (6, 0)
    assert guard.p_value == pytest.approx(sign_test_p(6, 0)) == pytest.approx(1 / 64)
    described = guard.describe()
    assert described.startswith(f"guard {BENCH}: 0.4000 against champion v1's 1.0000")
    assert "drop 0.6000 > 0.1" in described and "6 rows worse, 0 better, p=0.0156" in described


def test_a_drop_within_the_limit_or_a_gain_passes():
    rows = _bench_rows([1.0] * 9 + [0.0])
    (small,) = check_guards({BENCH: 0.1}, {BENCH: 0.9}, {BENCH: 1.0}, "the base", rows, rows)
    (gain,) = check_guards({BENCH: 0.0}, {BENCH: 0.9}, {BENCH: 0.5}, "the base", rows, rows)
    assert small.passed and small.drop == pytest.approx(0.1)  # at the limit: allowed
    assert gain.passed and gain.drop == pytest.approx(-0.4)


def test_a_lower_is_better_metric_drops_when_it_rises():
    rows = [{"row": i, "task": "t", "loss": 1.0} for i in range(4)]
    worse = [{**r, "loss": 2.0} for r in rows]
    (guard,) = check_guards(
        {"eval_loss": 0.5}, {"eval_loss": 2.0}, {"eval_loss": 1.0}, "x", worse, rows
    )
    assert not guard.passed and guard.drop == pytest.approx(1.0) and not guard.higher_is_better
    assert (guard.worse, guard.better) == (4, 0)


def test_a_guard_on_an_eval_metric_pairs_the_rows_of_its_subset():
    reference = [{"row": i, "task": "a" if i < 4 else "b", "exact": True} for i in range(8)]
    tuned = [{**r, "exact": r["task"] == "b"} for r in reference]
    (guard,) = check_guards(
        {"exact_match.a": 0.2},
        {"exact_match.a": 0.0},
        {"exact_match.a": 1.0},
        "champion v2",
        tuned,
        reference,
    )
    assert not guard.passed and (guard.worse, guard.better) == (4, 0)  # only family a's rows


def test_a_metric_the_tuned_model_lacks_fails_and_says_so():
    (guard,) = check_guards({BENCH: 0.1}, {}, {BENCH: 1.0}, "the base", [], [])
    assert not guard.passed and guard.describe() == f"guard {BENCH}: not scored for the tuned model"
    assert guard.p_value is None


def test_a_result_survives_its_tag():
    (guard,) = check_guards(
        {BENCH: 0.1}, {BENCH: 0.4}, {BENCH: 1.0}, "x", _bench_rows([0.4]), _bench_rows([1.0])
    )
    data = guard.as_dict()
    assert data["passed"] is False and data["drop"] == pytest.approx(0.6)
    assert GuardResult.from_dict(data) == guard


def _config(*overrides: str):
    return load_config(PRESET, [f"data.path={BUNDLED_DATA}", *overrides])


BENCHMARKS = f"evaluation.benchmarks={{lm_eval: {{path: {SUITE}}}}}"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            ["registry.guards={bench.guard_antonym.acc: 0.1}"],
            "registry.guards.bench.guard_antonym.acc: no benchmarks are configured",
        ),
        (["registry.guards={bleu: 0.1}"], "registry.guards.bleu: bleu is not scored"),
        (["registry.guards={exact_match: -0.1}"], "greater than or equal to 0"),
        (["evaluation.metrics=[lm_eval]"], "lm_eval scores the model on tasks of its own"),
        (["evaluation.benchmarks={rouge_l: {}}"], "rouge_l scores answers, not the model"),
        (["evaluation.benchmarks={nope: {}}"], "unknown evaluator 'nope'"),
        ([f"{BENCHMARKS}", "evaluation.benchmarks.lm_eval.limit=0"], "lm_eval.limit"),
        (["data.replay=0.5"], "data.replay replays a registered parent's data"),
    ],
)
def test_bad_guards_benchmarks_and_replay_fail_when_the_config_loads(overrides, message):
    with pytest.raises(ConfigError, match=message) as raised:
        _config(*overrides)
    assert "\n" not in str(raised.value)


def test_guards_on_benchmark_metrics_are_checked_against_the_task_files():
    from tuneforge.preflight import check_benchmarks

    good = _config(BENCHMARKS, "registry.guards={bench.guard_antonym.acc: 0.1, rouge_l: 0.2}")
    assert check_benchmarks(good) == {
        "bench.guard_uppercase.exact_match": True,
        "bench.guard_first_letter.exact_match": True,
        "bench.guard_antonym.acc": True,
    }
    typo = _config(BENCHMARKS, "registry.guards={bench.guard_antonym.accuracy: 0.1}")
    with pytest.raises(
        ConfigError,
        match=r"accuracy: not a metric the benchmarks produce "
        r"\(they produce bench.guard_antonym.acc, ",
    ):
        check_benchmarks(typo)
    unknown = _config(BENCHMARKS, "evaluation.benchmarks.lm_eval.tasks=[guard_nope]")
    with pytest.raises(ConfigError, match=r"^evaluation.benchmarks.lm_eval.tasks: guard_nope"):
        check_benchmarks(unknown)


def test_replay_takes_a_deterministic_share_of_the_rows():
    from tuneforge.data.replay import replay_sample

    rows = [
        {"row": i, "task": "t", "messages": [{"role": "user", "content": str(i)}]}
        for i in range(100)
    ]
    picked = replay_sample(rows, 0.3, seed=0)
    assert len(picked) == 30 and picked == replay_sample(rows, 0.3, seed=0)
    assert [r["row"] for r in picked] == sorted(r["row"] for r in picked)  # source order
    assert picked != replay_sample(rows, 0.3, seed=1)
    assert replay_sample(rows, 0.0, seed=0) == [] and len(replay_sample(rows[:2], 0.1, 0)) == 1


def test_replay_rebuilds_the_parents_split_and_refuses_changed_data(tmp_path):
    from tuneforge.data.replay import parent_training_rows
    from tuneforge.data.splitting import split_records

    config = _config().data
    valid = tmp_path / "first"
    rows = parent_training_rows(config, _fingerprint(config, tmp_path / "probe"), valid, "v1")
    assert 1000 < len(rows) < 1508 and all("messages" in r for r in rows)
    again, _ = split_records(_records(valid), config.eval_fraction, config.seed, [])
    assert rows == again
    with pytest.raises(ValueError, match=r"data.replay: .*instructions.jsonl has changed since v1"):
        parent_training_rows(config, "0123456789abcdef", tmp_path / "second", "v1")


def _fingerprint(config, scratch) -> str:
    from tuneforge.data.reading import iter_rows
    from tuneforge.data.validation import validate_file

    report = validate_file(
        list(iter_rows(config.path)), config.max_chars, scratch / "v", scratch / "q", None, "d"
    )
    return report.fingerprint


def _records(folder):
    from tuneforge.jsonl import read_jsonl

    return read_jsonl(folder / "valid.jsonl")
