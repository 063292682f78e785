"""Suite definitions: fixed lists, reproducible random suites, name errors, the CLI listing."""

from pathlib import Path

import pytest

from mtrl_bench import cli
from mtrl_bench.errors import UserError
from mtrl_bench.suites import (
    FIXED_SUITES,
    GOAL_SEED,
    MT50,
    NUM_GOALS,
    goal_cache_path,
    goal_tasks,
    make_env,
    normalize_task_name,
    resolve_suite,
    resolve_tasks,
)


def test_fixed_suites_follow_the_harmodt_order():
    assert len(MT50) == len(set(MT50)) == 50
    assert all(task.endswith("-v3") for task in MT50)
    assert resolve_suite("mt5") == MT50[:5]
    assert resolve_suite("mt30") == MT50[:30]
    assert resolve_suite("mt50") == MT50
    assert MT50[:3] == ["basketball-v3", "bin-picking-v3", "button-press-topdown-v3"]
    assert MT50[-1] == "box-close-v3"
    assert len(resolve_suite("mt10")) == 10 and set(resolve_suite("mt10")) <= set(MT50)


def test_all_tasks_exist_in_metaworld():
    import metaworld.env_dict

    assert set(MT50) == set(metaworld.env_dict.ALL_V3_ENVIRONMENTS)


def test_random_suites_are_reproducible_and_distinct():
    first = resolve_suite("random-10:3")
    assert first == resolve_suite("random-10:3")
    assert len(first) == len(set(first)) == 10 and set(first) <= set(MT50)
    assert first != resolve_suite("random-10:4")
    assert sorted(resolve_suite("random-50:0"), key=MT50.index) == MT50


def test_returned_lists_are_copies():
    resolve_suite("mt5").append("x")
    assert FIXED_SUITES["mt5"] == MT50[:5]


@pytest.mark.parametrize("name", ["mt6", "random-0:1", "random-51:1", "random-5", "MT5"])
def test_unknown_suites_raise(name):
    with pytest.raises(UserError):
        resolve_suite(name)


def test_task_names_are_normalized():
    assert normalize_task_name("reach") == "reach-v3"
    assert normalize_task_name("reach-v2") == "reach-v3"
    assert resolve_tasks(tasks=["push-v2", "reach"]) == ["push-v3", "reach-v3"]
    with pytest.raises(UserError, match="unknown task"):
        normalize_task_name("reach-the-moon")
    with pytest.raises(UserError):
        resolve_tasks()


def test_goals_are_fixed_per_index():
    goals = goal_tasks("reach-v3")
    assert len(goals) == NUM_GOALS
    first = make_env("reach-v3", 3).reset()[0]
    again = make_env("reach-v3", 3).reset()[0]
    other = make_env("reach-v3", 4).reset()[0]
    assert (first == again).all() and not (first == other).all()
    with pytest.raises(UserError):
        make_env("reach-v3", NUM_GOALS)


def test_goals_come_from_a_cache_that_is_rebuilt_when_damaged(tmp_path, monkeypatch):
    """The cached goals equal MT1's; with MT1 unusable they still load; a damaged entry or
    another task's goals are rebuilt; without a home folder they are built, not cached."""
    from importlib.metadata import version

    import metaworld

    monkeypatch.setenv("HOME", str(tmp_path))
    goal_tasks.cache_clear()
    fresh = tuple(metaworld.MT1("reach-v3", seed=GOAL_SEED).train_tasks)
    path = goal_cache_path("reach-v3")
    assert path.is_relative_to(tmp_path) and path.parent.name == f"metaworld-{version('metaworld')}"
    try:
        assert goal_tasks("reach-v3") == fresh and path.is_file()
        build = metaworld.MT1

        def unusable(*args, **kwargs):
            raise AssertionError("built again")

        monkeypatch.setattr(metaworld, "MT1", unusable)
        goal_tasks.cache_clear()
        assert goal_tasks("reach-v3") == fresh  # from the cache
        monkeypatch.setattr(metaworld, "MT1", build)
        goal_tasks("push-v3")  # writes its own entry
        for damage in (b"not a pickle", goal_cache_path("push-v3").read_bytes()):
            path.write_bytes(damage)
            goal_tasks.cache_clear()
            assert goal_tasks("reach-v3") == fresh
            assert path.read_bytes() != damage

        def homeless():
            raise RuntimeError("Could not determine home directory.")

        monkeypatch.setattr(Path, "home", homeless)  # no cache at all: built, not cached
        goal_tasks.cache_clear()
        assert goal_tasks("reach-v3") == fresh
    finally:
        goal_tasks.cache_clear()


def test_suites_command_lists_tasks(capsys):
    assert cli.main(["suites"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == list(FIXED_SUITES)
    assert lines[0] == "mt5 (5 tasks): " + " ".join(MT50[:5])
    assert cli.main(["suites", "random-3:7"]) == 0
    assert capsys.readouterr().out.split(": ")[1].split() == resolve_suite("random-3:7")


def test_suites_command_rejects_unknown_suite(capsys):
    assert cli.main(["suites", "mt7"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown suite 'mt7'" in err[0] and "mt50" in err[0]
