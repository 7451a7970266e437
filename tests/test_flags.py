from __future__ import annotations

import itertools
import json
import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

# Import Airflow before any test runs: importing it replaces the root logging handlers, which would
# drop pytest's capture handler if it first happened inside a test.
from airflow.sdk import Variable

from airflow_provider_walthrottle.flags import (
    ACCEPTED_FORMS,
    KILL_SWITCH_VARIABLE,
    WAL_HEALTH_FLAG,
    FeatureFlag,
    FlagState,
    InvalidFlagValueError,
    actor_bucket,
    health_check_flag,
    kill_switch,
    parse_flag_value,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
LOGGER = "airflow_provider_walthrottle.flags"
KEY = "walthrottle_test_flag"
ENV = f"AIRFLOW_VAR_{KEY.upper()}"


def flag_warnings(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == LOGGER and r.levelno >= logging.WARNING]


@pytest.fixture
def unset_var(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV, raising=False)


# ---------------------------------------------------------------------------------------------------
# parse_flag_value: pure
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "enabled"),
    [
        ("true", True),
        ("TRUE", True),
        ("True", True),
        ("on", True),
        ("ON", True),
        ("1", True),
        ("yes", True),
        ("YeS", True),
        ("  true\n", True),
        ("\ton ", True),
        ("false", False),
        ("FALSE", False),
        ("off", False),
        ("Off", False),
        ("0", False),
        ("no", False),
        ("NO", False),
        (" false ", False),
        ("\n0\n", False),
        ("{}", False),
        (" {} ", False),
        ('{"enabled": true}', True),
        ('{"enabled": false}', False),
        ('{"enabled": true, "actors": [], "percentage_of_actors": 0}', True),
        ('{"actors": ["a"], "percentage_of_actors": 25.5}', False),
    ],
)
def test_parse_accepted(raw: str, enabled: bool) -> None:
    assert parse_flag_value(raw).is_enabled_for(None, flag_key=KEY) is enabled


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("{}", FlagState()),
        (
            '{"enabled": false, "actors": ["migration_a", "dag_b"], "percentage_of_actors": 25}',
            FlagState(enabled=False, actors=("migration_a", "dag_b"), percentage_of_actors=25.0),
        ),
        ('{"percentage_of_actors": 0.5}', FlagState(percentage_of_actors=0.5)),
        ('{"percentage_of_actors": 100}', FlagState(percentage_of_actors=100.0)),
        ('{"actors": []}', FlagState()),
    ],
)
def test_parse_json_state(raw: str, expected: FlagState) -> None:
    assert parse_flag_value(raw) == expected


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ("maybe", "not a recognised word"),
        ("", "empty value"),
        ("   ", "empty value"),
        ("2", "not a recognised word"),
        ("tru", "not a recognised word"),
        ("y", "not a recognised word"),
        ("enabled", "not a recognised word"),
        ('"true"', "not a recognised word"),
        ("null", "not a recognised word"),
        ("[1]", "not a recognised word"),
        ("{", "not valid JSON"),
        ('{"enabled": true', "not valid JSON"),
        ('{"enabled": "yes"}', '"enabled" must be true or false'),
        ('{"enabled": 1}', '"enabled" must be true or false'),
        ('{"enabled": null}', '"enabled" must be true or false'),
        ('{"actors": "a"}', '"actors" must be a list of strings'),
        ('{"actors": ["a", 1]}', '"actors" must be a list of strings'),
        ('{"actors": null}', '"actors" must be a list of strings'),
        ('{"percentage_of_actors": 101}', '"percentage_of_actors" must be a number from 0 to 100'),
        ('{"percentage_of_actors": -1}', '"percentage_of_actors" must be a number from 0 to 100'),
        ('{"percentage_of_actors": true}', '"percentage_of_actors" must be a number from 0 to 100'),
        ('{"percentage_of_actors": "25"}', '"percentage_of_actors" must be a number from 0 to 100'),
        ('{"percentage_of_actors": NaN}', '"percentage_of_actors" must be a number from 0 to 100'),
        ('{"percentage_of_actors": Infinity}', '"percentage_of_actors" must be a number from 0 to 100'),
        ('{"enabeld": true}', "unknown key(s) 'enabeld'"),
        ('{"enabled": true, "groups": ["x"]}', "unknown key(s) 'groups'"),
        ('{"actors": ' + "[" * 100_000 + "]" * 100_000 + "}", "not valid JSON"),
    ],
)
def test_parse_invalid(raw: str, reason: str) -> None:
    with pytest.raises(InvalidFlagValueError) as excinfo:
        parse_flag_value(raw)
    assert isinstance(excinfo.value, ValueError)
    assert reason in excinfo.value.reason
    message = str(excinfo.value)
    assert ACCEPTED_FORMS in message
    assert "true/false, on/off, 1/0 or yes/no" in message
    assert "percentage_of_actors" in message
    assert len(message) < 1000  # the bad value is truncated
    assert "\n" not in message


def test_parse_rejects_non_string() -> None:
    with pytest.raises(InvalidFlagValueError, match="expected a string, got int"):
        parse_flag_value(1)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------------
# FlagState.is_enabled_for: actors and percentage buckets
# ---------------------------------------------------------------------------------------------------

ACTORS = [f"migration_{i}" for i in range(10_000)]


def enabled_actors(percentage: float, actors: list[str] = ACTORS, key: str = WAL_HEALTH_FLAG) -> set[str]:
    state = FlagState(percentage_of_actors=percentage)
    return {a for a in actors if state.is_enabled_for(a, flag_key=key)}


def test_actors_list() -> None:
    state = parse_flag_value('{"actors": ["migration_a", "dag_b"]}')
    assert state.is_enabled_for("migration_a", flag_key=KEY)
    assert state.is_enabled_for("dag_b", flag_key=KEY)
    assert not state.is_enabled_for("migration_b", flag_key=KEY)
    assert not state.is_enabled_for("MIGRATION_A", flag_key=KEY)
    assert not state.is_enabled_for(None, flag_key=KEY)


def test_enabled_wins_over_everything() -> None:
    state = FlagState(enabled=True, actors=(), percentage_of_actors=0)
    assert all(state.is_enabled_for(a, flag_key=KEY) for a in [None, "x", *ACTORS[:100]])


def test_percentage_needs_an_actor() -> None:
    assert not FlagState(percentage_of_actors=100).is_enabled_for(None, flag_key=KEY)


def test_percentage_zero_and_hundred() -> None:
    assert enabled_actors(0) == set()
    assert enabled_actors(100) == set(ACTORS)


@pytest.mark.parametrize("percentage", [1, 10, 25, 50, 75])
def test_percentage_is_roughly_proportional(percentage: int) -> None:
    share = len(enabled_actors(percentage)) / len(ACTORS) * 100
    assert percentage * 0.88 - 0.5 <= share <= percentage * 1.12 + 0.5


def test_percentage_25_of_10000() -> None:
    assert 2_200 <= len(enabled_actors(25)) <= 2_800


def test_percentage_is_monotonic() -> None:
    steps = [0, 0.5, 1, 5, 25, 25.001, 50, 99.999, 100]
    sets = [enabled_actors(p) for p in steps]
    for smaller, larger in itertools.pairwise(sets):
        assert smaller <= larger


def test_fractional_percentage_resolution() -> None:
    # 0.001 % is the smallest step: one bucket out of 100_000.
    assert all(actor_bucket(KEY, a) < 1 for a in enabled_actors(0.001, key=KEY))
    assert len(enabled_actors(0.5)) < len(enabled_actors(1))


def test_buckets_differ_between_flags() -> None:
    # Two flags at 25 % must not enable the same quarter of the actors.
    a = enabled_actors(25, key="flag_one")
    b = enabled_actors(25, key="flag_two")
    assert a != b
    assert len(a & b) < len(a) * 0.5


def test_bucket_values_are_pinned() -> None:
    # Changing the bucketing reshuffles every partial rollout on deploy; these values must not move.
    assert actor_bucket(WAL_HEALTH_FLAG, "migration_a") == 71207
    assert actor_bucket(WAL_HEALTH_FLAG, "dag_b") == 9698
    assert actor_bucket(WAL_HEALTH_FLAG, "backfill_users_email") == 26031


@pytest.mark.parametrize("hash_seed", ["0", "4242"])
def test_percentage_is_deterministic_across_processes(hash_seed: str) -> None:
    actors = ACTORS[:1000]
    script = (
        "import json, sys\n"
        "from airflow_provider_walthrottle.flags import FlagState, WAL_HEALTH_FLAG\n"
        "state = FlagState(percentage_of_actors=25)\n"
        "actors = json.load(sys.stdin)\n"
        "print(json.dumps(sorted(a for a in actors if state.is_enabled_for(a, flag_key=WAL_HEALTH_FLAG))))\n"
    )
    env = {**os.environ, "PYTHONHASHSEED": hash_seed, "PYTHONPATH": str(REPO_ROOT)}
    result = subprocess.run(
        [sys.executable, "-c", script],
        input=json.dumps(actors),
        capture_output=True,
        text=True,
        env=env,
        check=True,
        timeout=60,
    )
    assert set(json.loads(result.stdout)) == enabled_actors(25, actors)


# ---------------------------------------------------------------------------------------------------
# FeatureFlag: reads real Airflow Variables (AIRFLOW_VAR_* through airflow.sdk.Variable)
# ---------------------------------------------------------------------------------------------------


def test_constants_and_repr() -> None:
    assert WAL_HEALTH_FLAG == "batched_migrations_health_status_wal"
    assert repr(FeatureFlag(WAL_HEALTH_FLAG)) == (
        "FeatureFlag(variable_key='batched_migrations_health_status_wal', default=False, safe_value=None)"
    )
    assert repr(FeatureFlag(KEY, default=True)) == (
        f"FeatureFlag(variable_key='{KEY}', default=True, safe_value=None)"
    )
    # the safety switches: a health check's safe side is on (throttle), the kill switch's is off
    assert health_check_flag() == FeatureFlag(WAL_HEALTH_FLAG, default=False, safe_value=True)
    assert health_check_flag(KEY, default=True) == FeatureFlag(KEY, default=True, safe_value=True)
    assert kill_switch() == FeatureFlag(KILL_SWITCH_VARIABLE, default=True, safe_value=False)


@pytest.mark.parametrize(
    ("key", "default", "safe_value"),
    [("", False, None), (None, False, None), (KEY, "yes", None), (KEY, 1, None), (KEY, False, "on")],
)
def test_constructor_rejects_bad_arguments(key: object, default: object, safe_value: object) -> None:
    with pytest.raises(TypeError):
        FeatureFlag(key, default, safe_value)  # type: ignore[arg-type]


def test_airflow_reads_env_variables_outside_a_task(monkeypatch: pytest.MonkeyPatch) -> None:
    # The premise of the tests below: no task, no database, AIRFLOW_VAR_* is visible.
    monkeypatch.setenv(ENV, "on")
    assert Variable.get(KEY) == "on"


@pytest.mark.usefixtures("unset_var")
@pytest.mark.parametrize("default", [False, True])
def test_missing_variable_gives_default_quietly(default: bool, caplog: pytest.LogCaptureFixture) -> None:
    flag = FeatureFlag(KEY, default=default)
    with caplog.at_level(logging.DEBUG, logger=LOGGER):
        assert flag.is_enabled() is default
        assert flag.is_enabled("migration_a") is default
    assert flag_warnings(caplog) == []
    assert any(KEY in r.getMessage() and "not set" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("TRUE", True), (" yes ", True), ("1", True), ("off", False), ("False", False), ("0", False)],
)
@pytest.mark.parametrize("default", [False, True])
def test_words_from_env(
    raw: str, expected: bool, default: bool, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv(ENV, raw)
    flag = FeatureFlag(KEY, default=default)
    assert flag.is_enabled() is expected
    assert flag.is_enabled("migration_a") is expected
    assert flag_warnings(caplog) == []


@pytest.mark.parametrize("default", [False, True])
@pytest.mark.parametrize(
    "raw", ["maybe", "", "tru", '{"enabeld": true}', '{"percentage_of_actors": 101}', "{"]
)
def test_invalid_value_gives_default_with_one_warning(
    raw: str, default: bool, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv(ENV, raw)
    flag = FeatureFlag(KEY, default=default)
    with caplog.at_level(logging.DEBUG, logger=LOGGER):
        assert flag.is_enabled("migration_a") is default
    [record] = flag_warnings(caplog)
    message = record.getMessage()
    assert KEY in message
    assert repr(raw) in message
    assert ACCEPTED_FORMS in message
    assert f"default {default}" in message
    assert "\n" not in message


def test_invalid_value_is_truncated_in_the_warning(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    raw = "x" * 10_000
    monkeypatch.setenv(ENV, raw)
    assert FeatureFlag(KEY).is_enabled() is False
    [record] = flag_warnings(caplog)
    message = record.getMessage()
    assert raw not in message
    assert "x" * 150 in message
    assert len(message) < 200 + len(ACCEPTED_FORMS) + 300


@pytest.mark.parametrize("default", [False, True])
def test_unreadable_variable_gives_default_with_one_warning(
    default: bool, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def broken_get(*args: object, **kwargs: object) -> str:
        raise RuntimeError("vault sealed\nsecond line")

    monkeypatch.setattr(Variable, "get", broken_get)
    assert FeatureFlag(KEY, default=default).is_enabled("migration_a") is default
    [record] = flag_warnings(caplog)
    message = record.getMessage()
    assert KEY in message
    assert "RuntimeError: vault sealed second line" in message
    assert "\n" not in message


def test_json_rollout_from_env(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setenv(ENV, '{"actors": ["migration_a", "dag_b"]}')
    flag = FeatureFlag(KEY)
    assert flag.is_enabled("migration_a")
    assert flag.is_enabled("dag_b")
    assert not flag.is_enabled("migration_b")
    assert not flag.is_enabled()

    monkeypatch.setenv(ENV, '{"percentage_of_actors": 100}')
    assert flag.is_enabled("migration_b")
    assert not flag.is_enabled()

    monkeypatch.setenv(ENV, '{"enabled": true}')
    assert flag.is_enabled()
    assert flag.state() == FlagState(enabled=True)
    assert flag_warnings(caplog) == []


def test_partial_rollout_matches_pure_bucketing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV, '{"percentage_of_actors": 25}')
    flag = FeatureFlag(KEY)
    actors = ACTORS[:500]
    assert {a for a in actors if flag.is_enabled(a)} == enabled_actors(25, actors, key=KEY)


def test_not_read_at_construction(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    real_get = Variable.get

    def counting_get(key: str, *args: object, **kwargs: object) -> object:
        calls.append(key)
        return real_get(key, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(Variable, "get", counting_get)
    monkeypatch.delenv(ENV, raising=False)

    flag = FeatureFlag(KEY)
    assert calls == []

    monkeypatch.setenv(ENV, "true")
    assert flag.is_enabled() is True
    assert calls == [KEY]


@pytest.mark.usefixtures("unset_var")
def test_each_call_reads_the_current_value(monkeypatch: pytest.MonkeyPatch) -> None:
    flag = FeatureFlag(KEY)
    assert flag.is_enabled() is False
    monkeypatch.setenv(ENV, "true")
    assert flag.is_enabled() is True
    monkeypatch.setenv(ENV, "false")
    assert flag.is_enabled() is False
    monkeypatch.setenv(ENV, "on")
    assert flag.is_enabled() is True
    monkeypatch.delenv(ENV)
    assert flag.is_enabled() is False


# ---------------------------------------------------------------------------------------------------
# Safety switches fail to the safe side: a Variable that is set but unusable protects the database
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("raw", ["flase", "maybe", "", '{"enabeld": true}', "{"])
@pytest.mark.parametrize(
    ("make_flag", "safe", "word"),
    [
        (lambda: health_check_flag(KEY, default=False), True, "on"),
        (lambda: health_check_flag(KEY, default=True), True, "on"),
        (lambda: kill_switch(KEY), False, "off"),
    ],
    ids=["health-check-default-off", "health-check-default-on", "kill-switch"],
)
def test_invalid_value_of_a_safety_switch_reads_as_its_safe_side(
    raw: str,
    make_flag: Any,
    safe: bool,
    word: str,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setenv(ENV, raw)
    flag = make_flag()
    with caplog.at_level(logging.DEBUG, logger=LOGGER):
        assert flag.is_enabled() is safe
        assert flag.is_enabled("migration_a") is safe
    first = flag_warnings(caplog)[0].getMessage()
    assert KEY in first and repr(raw) in first
    assert f"treating it as {word}, the safe side that protects the database" in first
    assert "\n" not in first


@pytest.mark.parametrize(
    ("make_flag", "safe"),
    [(lambda: health_check_flag(KEY), True), (lambda: kill_switch(KEY), False)],
    ids=["health-check", "kill-switch"],
)
def test_unreadable_safety_switch_reads_as_its_safe_side(
    make_flag: Any, safe: bool, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # A secrets backend that fails cannot be run here; Variable.get raising stands in for it.
    def broken_get(*args: object, **kwargs: object) -> str:
        raise RuntimeError("vault sealed")

    monkeypatch.setattr(Variable, "get", broken_get)
    assert make_flag().is_enabled("migration_a") is safe
    [record] = flag_warnings(caplog)
    assert "could not be read (RuntimeError: vault sealed)" in record.getMessage()
    assert "the safe side" in record.getMessage()


@pytest.mark.usefixtures("unset_var")
def test_a_missing_safety_switch_still_means_its_documented_default(caplog: pytest.LogCaptureFixture) -> None:
    assert health_check_flag(KEY).is_enabled("migration_a") is False
    assert health_check_flag(KEY, default=True).is_enabled("migration_a") is True
    assert kill_switch(KEY).is_enabled("migration_a") is True
    assert flag_warnings(caplog) == []
