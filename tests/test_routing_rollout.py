"""A service's rollout: block: defaults, accepted edges, every rejection with its path, line and message."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from ferry.routing import (
    Analysis,
    ConfigError,
    RevisionStore,
    Rollout,
    load_routes,
    validate,
)
from ferry.routing import schema as schema_module
from ferry.routing.revisions import template_digest

from .helpers import load, only, problems


def rollout_of(tmp_path: Path, rollout: str) -> Rollout:
    text = f"services:\n  hello:\n    template: {{command: [a]}}\n    rollout: {rollout}\n"
    found = load_routes(tmp_path / "routes.yaml", text=text).spec.services["hello"].rollout
    assert found is not None
    return found


# -- defaults and accepted values -------------------------------------------------------------------------


def test_the_issue_example_loads(tmp_path: Path) -> None:
    spec = load(
        tmp_path,
        """
        services:
          hello:
            template: {command: [a]}
            rollout:
              strategy: canary
              steps: [5, 25, 50, 100]
              interval: 30s
              analysis:
                minRequests: 50
                successRate: 99
                maxLatencyP99: 500ms
                failureLimit: 1
        """,
    ).spec
    assert spec.services["hello"].rollout == Rollout(
        strategy="canary",
        steps=(5, 25, 50, 100),
        interval=30.0,
        analysis=Analysis(minRequests=50, successRate=99.0, maxLatencyP99=0.5, failureLimit=1),
    )


def test_no_rollout_by_default(tmp_path: Path) -> None:
    spec = load(tmp_path, "services:\n  hello:\n    template: {command: [a]}\n").spec
    assert spec.services["hello"].rollout is None
    assert load(tmp_path, "services:\n  hello:\n    template: {command: [a]}\n    rollout:\n").spec == spec


def test_canary_defaults_fill_in_the_steps(tmp_path: Path) -> None:
    r = rollout_of(tmp_path, "{strategy: canary}")
    assert (r.strategy, r.steps, r.interval, r.duration, r.autoPromote) == ("canary", (5, 25, 50, 100), 30.0, None, True)
    assert type(r.steps) is tuple
    assert r.analysis == Analysis()
    a = r.analysis
    assert (a.minRequests, a.successRate, a.maxLatencyP99, a.failureLimit) == (50, 99.0, None, 1)
    assert type(a.successRate) is float
    assert rollout_of(tmp_path, "{strategy: canary, steps: null}").steps == (5, 25, 50, 100)


def test_gradual_defaults_fill_in_the_duration(tmp_path: Path) -> None:
    r = rollout_of(tmp_path, "{strategy: gradual}")
    assert (r.strategy, r.steps, r.interval, r.duration, r.autoPromote) == ("gradual", None, 30.0, 120.0, True)


def test_blue_green_defaults(tmp_path: Path) -> None:
    r = rollout_of(tmp_path, "{strategy: blue-green}")
    assert (r.strategy, r.steps, r.interval, r.duration, r.autoPromote) == ("blue-green", None, 30.0, None, True)
    assert rollout_of(tmp_path, "{strategy: blue-green, autoPromote: false}").autoPromote is False
    assert rollout_of(tmp_path, "{strategy: blue-green, autoPromote: true}").autoPromote is True


def test_models_fill_defaults_compare_by_value_and_are_frozen_and_hashable() -> None:
    a = Rollout(strategy="canary")
    b = Rollout(strategy="canary", steps=[5, 25, 50, 100], interval="30s", analysis={})
    assert a == b and hash(a) == hash(b) and len({a, b}) == 1
    assert Rollout(strategy="gradual") == Rollout(strategy="gradual", duration="2m")
    assert a != Rollout(strategy="canary", steps=[10, 100])
    with pytest.raises(ValidationError, match="frozen"):
        a.strategy = "gradual"  # type: ignore[misc]
    with pytest.raises(ValidationError, match="frozen"):
        a.analysis.failureLimit = 3  # type: ignore[misc]
    with pytest.raises(ValidationError, match="autoPromote is for strategy blue-green"):
        Rollout(strategy="canary", autoPromote=True)  # written explicitly, even at its default
    with pytest.raises(ValidationError, match="steps must increase strictly"):
        Rollout(strategy="canary", steps=[50, 25])


def test_exports() -> None:
    assert {"Rollout", "Analysis"} <= set(schema_module.__all__)
    assert schema_module.Rollout is Rollout and schema_module.Analysis is Analysis
    assert schema_module.PREVIEW_TAG == "preview"


@pytest.mark.parametrize(
    ("rollout", "field", "stored"),
    [
        ("{strategy: canary, steps: [1]}", "steps", (1,)),
        ("{strategy: canary, steps: [100]}", "steps", (100,)),
        ("{strategy: canary, steps: [1, 100]}", "steps", (1, 100)),
        ("{strategy: canary, steps: [10, 50]}", "steps", (10, 50)),  # the last step below 100 is allowed
        ("{strategy: canary, steps: [1, 2, 3, 99, 100]}", "steps", (1, 2, 3, 99, 100)),
        ("{strategy: canary, interval: 1s}", "interval", 1.0),
        ("{strategy: canary, interval: 1000ms}", "interval", 1.0),
        ("{strategy: canary, interval: 1}", "interval", 1.0),
        ("{strategy: canary, interval: 1.5s}", "interval", 1.5),
        ("{strategy: canary, interval: 24h}", "interval", 86400.0),
        ("{strategy: blue-green, interval: 10m}", "interval", 600.0),
        ("{strategy: gradual, interval: 5s}", "interval", 5.0),
        ("{strategy: gradual, duration: 2s}", "duration", 2.0),
        ("{strategy: gradual, duration: 2}", "duration", 2.0),
        ("{strategy: gradual, duration: 2000ms}", "duration", 2.0),
        ("{strategy: gradual, duration: 2.5s}", "duration", 2.5),
        ("{strategy: gradual, duration: 1h}", "duration", 3600.0),
    ],
)
def test_rollout_fields_accept_their_range_edges(tmp_path: Path, rollout: str, field: str, stored: object) -> None:
    value = getattr(rollout_of(tmp_path, rollout), field)
    assert value == stored and type(value) is type(stored)


@pytest.mark.parametrize(
    ("analysis", "field", "stored"),
    [
        ("{minRequests: 0}", "minRequests", 0),
        ("{minRequests: 100000}", "minRequests", 100000),
        ("{successRate: 0}", "successRate", 0.0),
        ("{successRate: 100}", "successRate", 100.0),
        ("{successRate: 99.95}", "successRate", 99.95),
        ("{maxLatencyP99: 1ms}", "maxLatencyP99", 0.001),
        ("{maxLatencyP99: 0.25}", "maxLatencyP99", 0.25),
        ("{maxLatencyP99: 1h}", "maxLatencyP99", 3600.0),
        ("{maxLatencyP99: null}", "maxLatencyP99", None),
        ("{failureLimit: 1}", "failureLimit", 1),
        ("{failureLimit: 10}", "failureLimit", 10),
    ],
)
def test_analysis_fields_accept_their_range_edges(tmp_path: Path, analysis: str, field: str, stored: object) -> None:
    value = getattr(rollout_of(tmp_path, f"{{strategy: canary, analysis: {analysis}}}").analysis, field)
    assert value == stored and type(value) is type(stored)


def test_empty_analysis_means_the_defaults(tmp_path: Path) -> None:
    text = "services:\n  hello:\n    template: {command: [a]}\n    rollout:\n      strategy: canary\n      analysis:\n"
    rollout = load(tmp_path, text).spec.services["hello"].rollout
    assert rollout is not None and rollout.analysis == Analysis()


def test_rollout_works_with_a_traffic_block_following_the_latest(tmp_path: Path) -> None:
    spec = load(
        tmp_path,
        """
        services:
          hello:
            template: {command: [a]}
            rollout: {strategy: blue-green}
            traffic:
              - {revision: hello-00001, percent: 90, tag: current}
              - {latestRevision: true, percent: 10}
        """,
    ).spec
    assert spec.services["hello"].rollout == Rollout(strategy="blue-green")


def test_the_preview_tag_is_free_for_canary_and_gradual(tmp_path: Path) -> None:
    for strategy in ("canary", "gradual"):
        load(
            tmp_path,
            f"""
            services:
              hello:
                template: {{command: [a]}}
                rollout: {{strategy: {strategy}}}
                traffic:
                  - {{latestRevision: true, percent: 100, tag: preview}}
            """,
        )


def test_dumped_rollout_loads_back_equal(tmp_path: Path) -> None:
    text = """
    services:
      a: {template: {command: [a]}, rollout: {strategy: canary}}
      b: {template: {command: [a]}, rollout: {strategy: gradual, analysis: {maxLatencyP99: 250ms}}}
      c: {template: {command: [a]}, rollout: {strategy: blue-green, autoPromote: false, interval: 5m}}
    """
    spec = load(tmp_path, text).spec
    dumped = yaml.safe_dump(spec.model_dump(mode="json", exclude_defaults=True), sort_keys=False)
    assert load(tmp_path, dumped).spec == spec
    assert "autoPromote" not in yaml.safe_dump(spec.services["a"].model_dump(mode="json", exclude_defaults=True))


# -- the revision digest and the incremental path ---------------------------------------------------------


def test_a_rollout_block_does_not_change_the_revision(tmp_path: Path) -> None:
    """rollout: is service-level: adding, changing or removing it keeps the template's digest and revision."""
    base = "services:\n  hello:\n    template: {command: [a], env: {MESSAGE: hi}}\n"
    variants = [
        base,
        base + "    rollout: {strategy: canary}\n",
        base + "    rollout: {strategy: canary, steps: [10, 100], analysis: {successRate: 95}}\n",
        base + "    rollout: {strategy: blue-green, autoPromote: false}\n",
        base + "    rollout: {strategy: gradual, duration: 5m}\n",
    ]
    loads = [load(tmp_path, text) for text in variants]
    digests = {template_digest(loaded.spec.services["hello"].template) for loaded in loads}
    assert digests == {template_digest(loads[0].spec.services["hello"].template)}
    store = RevisionStore(tmp_path / "state.db")
    try:
        store.commit(validate(loads[0], store))
        for loaded in loads[1:]:
            plan = validate(loaded, store)
            assert plan.new == () and plan.current["hello"].name == "hello-00001"
    finally:
        store.close()


def test_an_edit_of_one_rollout_is_validated_incrementally(tmp_path: Path) -> None:
    path = tmp_path / "routes.yaml"
    first = load_routes(
        path,
        "services:\n  a:\n    template: {command: [a]}\n  b:\n    template: {command: [b]}\n",
    )
    second = load_routes(
        path,
        "services:\n  a:\n    template: {command: [a]}\n  b:\n    template: {command: [b]}\n"
        "    rollout: {strategy: canary, steps: [20, 100]}\n",
        previous=first,
    )
    assert second.spec.services["a"] is first.spec.services["a"]
    assert second.spec.services["b"].template is not first.spec.services["b"].template
    assert second.spec.services["b"].template == first.spec.services["b"].template
    rollout = second.spec.services["b"].rollout
    assert rollout is not None and rollout.steps == (20, 100)
    with pytest.raises(ConfigError) as info:
        load_routes(
            path,
            "services:\n  a:\n    template: {command: [a]}\n  b:\n    template: {command: [b]}\n"
            "    rollout: {strategy: canary}\n    traffic: [{revision: b-00001, percent: 100}]\n",
            previous=second,
        )
    (p,) = info.value.problems
    assert (p.path, p.line) == ("services.b.rollout", 6)
    with pytest.raises(ConfigError) as info:
        load_routes(
            path,
            "services:\n  a:\n    template: {command: [a]}\n  b:\n    template: {command: [b]}\n"
            "    rollout: {strategy: blue-green}\n  preview-b:\n    template: {command: [c]}\n",
            previous=second,
        )
    (p,) = info.value.problems
    assert (p.path, p.line) == ("services.preview-b", 7)


# -- rejections -------------------------------------------------------------------------------------------

ROLLOUT = """
services:
  hello:
    template: {{command: [a]}}
    rollout:
      strategy: {strategy}
      {field}: {value}
"""  # the field is on line 6


@pytest.mark.parametrize(
    ("strategy", "field", "value", "message"),
    [
        ("canary", "steps", "[]", (
            "steps is empty: list the percents of main traffic the new revision gets at each step, "
            "e.g. [5, 25, 50, 100], or remove steps for that default"
        )),
        ("canary", "steps", "[5, 50, 25, 100]", (
            "steps must increase strictly, but steps[2] (25) is not greater than steps[1] (50): "
            "sort them and drop repeats, e.g. [5, 25, 50, 100]"
        )),
        ("canary", "steps", "[5, 25, 25, 100]", (
            "steps must increase strictly, but steps[2] (25) is not greater than steps[1] (25): "
            "sort them and drop repeats, e.g. [5, 25, 100]"
        )),
        ("canary", "steps", "[100, 50]", (
            "steps must increase strictly, but steps[1] (50) is not greater than steps[0] (100): "
            "sort them and drop repeats, e.g. [50, 100]"
        )),
        ("canary", "steps", "5", "expected a list, got 5: write it as a YAML list, e.g. [5]"),
        ("canary", "steps", "5 25 50", "expected a list, got '5 25 50': write it as a YAML list, e.g. [5, 25, 50]"),
        ("canary", "interval", "0", "interval 0 is shorter than the minimum of 1s: raise it, e.g. 30s"),
        ("canary", "interval", "0s", "interval '0s' is shorter than the minimum of 1s: raise it, e.g. 30s"),
        ("canary", "interval", "999ms", "interval '999ms' is shorter than the minimum of 1s: raise it, e.g. 30s"),
        ("canary", "interval", "-5", "interval -5 is shorter than the minimum of 1s: raise it, e.g. 30s"),
        ("canary", "interval", ".inf", "interval must be a finite duration, got inf: e.g. 30s"),
        ("canary", "interval", "soon", (
            "invalid duration 'soon': write a number with a unit, e.g. 300s, 1.5s, 500ms, 2m, 1h or 1m30s"
        )),
        ("canary", "interval", "yes", (
            "expected a duration, got true: write a number with a unit, e.g. 300s, 1.5s, 500ms, 2m, 1h or 1m30s"
        )),
        ("gradual", "duration", "1s", (
            "duration '1s' is shorter than the minimum of 2s (a gradual rollout needs at least one 1s step "
            "after the first): raise it, e.g. 120s"
        )),
        ("gradual", "duration", "1999ms", (
            "duration '1999ms' is shorter than the minimum of 2s (a gradual rollout needs at least one 1s step "
            "after the first): raise it, e.g. 120s"
        )),
        ("gradual", "duration", "0", (
            "duration 0 is shorter than the minimum of 2s (a gradual rollout needs at least one 1s step "
            "after the first): raise it, e.g. 120s"
        )),
        ("blue-green", "autoPromote", "later", "expected true or false, got 'later'"),
        ("blue-green", "analysis", "strict", "expected a mapping (key: value lines), got 'strict'"),
    ],
)
def test_rollout_values_out_of_range(tmp_path: Path, strategy: str, field: str, value: str, message: str) -> None:
    path = tmp_path / "routes.yaml"
    path.write_text(ROLLOUT.format(strategy=strategy, field=field, value=value).lstrip("\n"))
    with pytest.raises(ConfigError) as info:
        load_routes(path)
    (p,) = info.value.problems
    assert (p.path, p.line, p.message) == (f"services.hello.rollout.{field}", 6, message)
    assert str(info.value) == f"{path}:6: services.hello.rollout.{field}: {message}"


STEPS = """
services:
  hello:
    template: {command: [a]}
    rollout:
      strategy: canary
      steps:
        - 5
        - %s
        - 100
"""  # steps[1] is on line 8


@pytest.mark.parametrize(
    ("step", "message"),
    [
        ("0", "must be 1 or more, got 0"),
        ("-5", "must be 1 or more, got -5"),
        ("101", "must be 100 or less, got 101"),
        ("25.5", "expected an integer, got 25.5"),
        ('"25"', "expected an integer, got '25': remove the quotes to write an integer"),
        ("25%", "expected an integer, got '25%'"),
        ("true", "expected an integer, got true"),
    ],
)
def test_each_step_is_an_integer_percent(tmp_path: Path, step: str, message: str) -> None:
    p = only(tmp_path, STEPS % step)
    assert (p.path, p.line, p.message) == ("services.hello.rollout.steps[1]", 8, message)


ANALYSIS = """
services:
  hello:
    template: {{command: [a]}}
    rollout:
      strategy: canary
      analysis:
        {field}: {value}
"""  # the field is on line 7


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("minRequests", "-1", "must be 0 or more, got -1"),
        ("minRequests", "1.5", "expected an integer, got 1.5"),
        ("successRate", "-0.1", "must be 0 or more, got -0.1"),
        ("successRate", "0.99", "successRate 0.99 is a percentage: write 99 for 99%"),
        ("successRate", "100.5", "must be 100 or less, got 100.5"),
        ("successRate", "99%", "expected a number, got '99%'"),
        ("successRate", ".nan", "expected a finite number, got nan: .inf and .nan are not allowed here"),
        ("maxLatencyP99", "0", "maxLatencyP99 must be greater than 0, got 0: e.g. 500ms"),
        ("maxLatencyP99", "0ms", "maxLatencyP99 must be greater than 0, got '0ms': e.g. 500ms"),
        ("maxLatencyP99", "-1", "maxLatencyP99 must be greater than 0, got -1: e.g. 500ms"),
        ("maxLatencyP99", "2h", "maxLatencyP99 '2h' is longer than the maximum of 1h (3600s): lower it"),
        ("maxLatencyP99", "fast", (
            "invalid duration 'fast': write a number with a unit, e.g. 300s, 1.5s, 500ms, 2m, 1h or 1m30s"
        )),
        ("failureLimit", "0", "must be 1 or more, got 0"),
        ("failureLimit", "-1", "must be 1 or more, got -1"),
        ("failureLimit", "1.0", "expected an integer, got 1.0"),
    ],
)
def test_analysis_values_out_of_range(tmp_path: Path, field: str, value: str, message: str) -> None:
    p = only(tmp_path, ANALYSIS.format(field=field, value=value))
    assert (p.path, p.line, p.message) == (f"services.hello.rollout.analysis.{field}", 7, message)


STEPS_ONLY = "steps are for strategy canary, not {strategy}: remove them or use strategy: canary"
DURATION_ONLY = (
    "duration is for strategy gradual (Knative's rollout-duration), not {strategy}: remove it "
    "(interval sets the time at each step) or use strategy: gradual"
)
AUTO_PROMOTE_ONLY = (
    "autoPromote is for strategy blue-green, not {strategy}: remove it ({why}) or use strategy: blue-green"
)
CANARY_PROMOTES = "a canary rollout promotes after its last passing step"
GRADUAL_PROMOTES = "a gradual rollout promotes when its duration has passed"


@pytest.mark.parametrize(
    ("strategy", "field", "value", "message"),
    [
        ("blue-green", "steps", "[5, 25, 50, 100]", STEPS_ONLY.format(strategy="blue-green")),
        ("gradual", "steps", "[50, 100]", STEPS_ONLY.format(strategy="gradual")),
        # the strategy is checked first: "remove them" is the fix, whatever the steps hold
        ("blue-green", "steps", "[50, 5, 500]", STEPS_ONLY.format(strategy="blue-green")),
        ("gradual", "steps", "[]", STEPS_ONLY.format(strategy="gradual")),
        ("canary", "duration", "120s", DURATION_ONLY.format(strategy="canary")),
        ("blue-green", "duration", "120s", DURATION_ONLY.format(strategy="blue-green")),
        ("canary", "duration", "1s", DURATION_ONLY.format(strategy="canary")),  # not "shorter than the minimum"
        ("canary", "autoPromote", "true", AUTO_PROMOTE_ONLY.format(strategy="canary", why=CANARY_PROMOTES)),
        ("canary", "autoPromote", "false", AUTO_PROMOTE_ONLY.format(strategy="canary", why=CANARY_PROMOTES)),
        ("gradual", "autoPromote", "true", AUTO_PROMOTE_ONLY.format(strategy="gradual", why=GRADUAL_PROMOTES)),
        ("gradual", "autoPromote", "false", AUTO_PROMOTE_ONLY.format(strategy="gradual", why=GRADUAL_PROMOTES)),
    ],
)
def test_strategy_specific_fields(tmp_path: Path, strategy: str, field: str, value: str, message: str) -> None:
    p = only(tmp_path, ROLLOUT.format(strategy=strategy, field=field, value=value))
    assert (p.path, p.line, p.message) == (f"services.hello.rollout.{field}", 6, message)


def test_every_misplaced_field_is_reported_in_one_pass(tmp_path: Path) -> None:
    found = problems(
        tmp_path,
        """
        services:
          hello:
            template: {command: [a]}
            rollout:
              strategy: canary
              steps: [5, 50, 25]
              duration: 60s
              autoPromote: false
              interval: 0s
              analysis: {successRate: 99, failureLimit: 0}
          world:
            template: {command: [a]}
            rollout: {strategy: gradual, steps: [10], autoPromote: true}
        """,
    )
    assert [(p.path, p.line) for p in found] == [
        ("services.hello.rollout.steps", 6),
        ("services.hello.rollout.duration", 7),
        ("services.hello.rollout.autoPromote", 8),
        ("services.hello.rollout.interval", 9),
        ("services.hello.rollout.analysis.failureLimit", 10),
        ("services.world.rollout.steps", 13),
        ("services.world.rollout.autoPromote", 13),
    ]


@pytest.mark.parametrize(
    ("strategy", "message"),
    [
        ("bluegreen", "expected one of 'canary', 'blue-green' or 'gradual', got 'bluegreen'; did you mean 'blue-green'?"),
        ("blue_green", "expected one of 'canary', 'blue-green' or 'gradual', got 'blue_green'; did you mean 'blue-green'?"),
        ("blueGreen", "expected one of 'canary', 'blue-green' or 'gradual', got 'blueGreen'; did you mean 'blue-green'?"),
        ("BlueGreen", "expected one of 'canary', 'blue-green' or 'gradual', got 'BlueGreen'; did you mean 'blue-green'?"),
        ("Canary", "expected one of 'canary', 'blue-green' or 'gradual', got 'Canary'; did you mean 'canary'?"),
        ("gradul", "expected one of 'canary', 'blue-green' or 'gradual', got 'gradul'; did you mean 'gradual'?"),
        ("rolling", "expected one of 'canary', 'blue-green' or 'gradual', got 'rolling'"),
        ("5", "expected one of 'canary', 'blue-green' or 'gradual', got 5"),
    ],
)
def test_unknown_strategy_gets_a_guess(tmp_path: Path, strategy: str, message: str) -> None:
    p = only(tmp_path, f"services:\n  hello:\n    template: {{command: [a]}}\n    rollout:\n      strategy: {strategy}\n")
    assert (p.path, p.line, p.message) == ("services.hello.rollout.strategy", 5, message)


def test_missing_strategy_lists_the_choices(tmp_path: Path) -> None:
    p = only(tmp_path, "services:\n  hello:\n    template: {command: [a]}\n    rollout:\n      interval: 10s\n")
    assert (p.path, p.line, p.message) == (
        "services.hello.rollout.strategy",
        4,
        "required field 'strategy' is missing: add it, one of 'canary', 'blue-green' or 'gradual'",
    )


def test_a_strategy_in_place_of_the_block_says_how_to_write_it(tmp_path: Path) -> None:
    p = only(tmp_path, "services:\n  hello:\n    template: {command: [a]}\n    rollout: canary\n")
    assert (p.path, p.line, p.message) == (
        "services.hello.rollout",
        4,
        "expected a mapping (key: value lines), got 'canary': write rollout: {strategy: canary}",
    )
    p = only(tmp_path, "services:\n  hello:\n    template: {command: [a]}\n    rollout: fast\n")
    assert p.message == "expected a mapping (key: value lines), got 'fast'"


ROLLOUT_FIELDS = "(allowed: strategy, steps, interval, duration, analysis, autoPromote, sticky)"
ANALYSIS_FIELDS = "(allowed: minRequests, successRate, maxLatencyP99, failureLimit)"


@pytest.mark.parametrize(
    ("where", "key", "guess", "allowed"),
    [
        ("rollout", "autopromote", "autoPromote", ROLLOUT_FIELDS),
        ("rollout", "auto_promote", "autoPromote", ROLLOUT_FIELDS),
        ("rollout", "step", "steps", ROLLOUT_FIELDS),
        ("rollout", "intervall", "interval", ROLLOUT_FIELDS),
        # Knative's, Flagger's and Argo Rollouts' names
        ("rollout", "rollout-duration", "duration", ROLLOUT_FIELDS),
        ('rollout', '"serving.knative.dev/rollout-duration"', "duration", ROLLOUT_FIELDS),
        ("rollout", "stepWeights", "steps", ROLLOUT_FIELDS),
        ("rollout", "autoPromotionEnabled", "autoPromote", ROLLOUT_FIELDS),
        ("analysis", "failure_limit", "failureLimit", ANALYSIS_FIELDS),
        ("analysis", "failurelimit", "failureLimit", ANALYSIS_FIELDS),
        ("analysis", "min_requests", "minRequests", ANALYSIS_FIELDS),
        ("analysis", "success_rate", "successRate", ANALYSIS_FIELDS),
        ("analysis", "maxLatency", "maxLatencyP99", ANALYSIS_FIELDS),
        ("analysis", "threshold", "failureLimit", ANALYSIS_FIELDS),
        ("analysis", "request-success-rate", "successRate", ANALYSIS_FIELDS),
    ],
)
def test_misspelled_rollout_fields_get_a_guess(tmp_path: Path, where: str, key: str, guess: str, allowed: str) -> None:
    indent = "      " if where == "rollout" else "        "
    text = "services:\n  hello:\n    template: {command: [a]}\n    rollout:\n      strategy: blue-green\n"
    if where == "analysis":
        text += "      analysis:\n"
    text += f"{indent}{key}: 1\n"
    p = only(tmp_path, text)
    shown = key.strip('"')
    assert p.path.endswith(f".{shown}" if '"' not in key else f'["{shown}"]')
    assert p.line == (7 if where == "analysis" else 6)
    assert p.message == f"unknown field '{shown}'; did you mean '{guess}'? {allowed}"


# -- the rollout and the service's traffic ----------------------------------------------------------------


def test_traffic_without_a_latest_revision_target_is_refused(tmp_path: Path) -> None:
    p = only(
        tmp_path,
        """
        services:
          hello:
            template: {command: [a]}
            rollout: {strategy: canary}
            traffic:
              - {revision: hello-00001, percent: 100}
        """,
    )
    assert (p.path, p.line, p.message) == (
        "services.hello.rollout",
        4,
        "traffic has no latestRevision: true target, so the new revision would never receive traffic once the "
        "rollout ends: add a latestRevision: true target to services.hello.traffic or remove the rollout",
    )


def test_traffic_giving_the_latest_revision_zero_percent_is_refused(tmp_path: Path) -> None:
    p = only(
        tmp_path,
        """
        services:
          hello:
            template: {command: [a]}
            traffic:
              - {revision: hello-00001, percent: 100}
              - {latestRevision: true, tag: next}
            rollout:
              strategy: gradual
        """,
    )
    assert (p.path, p.line, p.message) == (
        "services.hello.rollout",
        7,
        "the latestRevision: true target (traffic[1]) has percent 0, so the new revision would never receive main "
        "traffic once the rollout ends: give it a percent above 0 or remove the rollout",
    )


def test_empty_traffic_with_a_rollout_reports_only_the_empty_traffic(tmp_path: Path) -> None:
    p = only(tmp_path, "services:\n  hello:\n    template: {command: [a]}\n    rollout: {strategy: canary}\n    traffic: []\n")
    assert p.path == "services.hello.traffic" and "traffic is empty" in p.message


def test_blue_green_owns_the_preview_tag(tmp_path: Path) -> None:
    p = only(
        tmp_path,
        """
        services:
          hello:
            template: {command: [a]}
            rollout: {strategy: blue-green}
            traffic:
              - {latestRevision: true, percent: 100}
              - {revision: hello-00001, tag: preview}
        """,
    )
    assert (p.path, p.line, p.message) == (
        "services.hello.traffic[1].tag",
        7,
        "tag 'preview' is taken by the blue-green rollout, which previews the new revision at "
        "preview-hello.<domain>: rename this tag",
    )


def test_both_traffic_rules_are_reported_together(tmp_path: Path) -> None:
    found = problems(
        tmp_path,
        """
        services:
          hello:
            template: {command: [a]}
            rollout: {strategy: blue-green}
            traffic:
              - {revision: hello-00001, percent: 100, tag: preview}
        """,
    )
    assert [(p.path, p.line) for p in found] == [("services.hello.rollout", 4), ("services.hello.traffic[0].tag", 6)]


def test_the_preview_host_is_claimed_like_a_tag_host(tmp_path: Path) -> None:
    p = only(
        tmp_path,
        """
        services:
          hello:
            template: {command: [a]}
            rollout: {strategy: blue-green}
          preview-hello:
            template: {command: [a]}
        """,
    )
    assert (p.path, p.line, p.message) == (
        "services.preview-hello",
        5,
        "host preview-hello.localhost is claimed by both service hello (the preview host of its blue-green "
        "rollout) at services.hello.rollout and service preview-hello (its own host): a host routes to one "
        "service only: remove or rename one",
    )
    # another service's extra host, and canary (no preview host) is fine
    p = only(
        tmp_path,
        """
        gateway: {domain: example.com}
        services:
          other:
            hosts: [preview-hello.example.com]
            template: {command: [a]}
          hello:
            template: {command: [a]}
            rollout: {strategy: blue-green}
        """,
    )
    assert (p.path, p.line) == ("services.hello.rollout", 8)
    assert "claimed by both service other (in its hosts) at services.other.hosts[0]" in p.message
    load(tmp_path, "services:\n  hello:\n    template: {command: [a]}\n    rollout: {strategy: canary}\n"
         "  preview-hello:\n    template: {command: [a]}\n")


def test_the_preview_host_label_must_fit(tmp_path: Path) -> None:
    name = "s" * 56  # preview- + 56 = 64 characters
    p = only(tmp_path, f"services:\n  {name}:\n    template: {{command: [a]}}\n    rollout:\n      strategy: blue-green\n")
    assert (p.path, p.line, p.message) == (
        f"services.{name}.rollout.strategy",
        5,
        f"blue-green previews the new revision at the host preview-{name}.<domain>, whose first label is 64 "
        "characters; a DNS label holds at most 63: shorten the service name or use strategy: canary or gradual",
    )
    load(tmp_path, f"services:\n  {name[:-1]}:\n    template: {{command: [a]}}\n    rollout: {{strategy: blue-green}}\n")
    load(tmp_path, f"services:\n  {name}:\n    template: {{command: [a]}}\n    rollout: {{strategy: canary}}\n")


def test_rollout_problems_do_not_hide_other_services_problems(tmp_path: Path) -> None:
    found = problems(
        tmp_path,
        """
        services:
          hello:
            template: {command: [a]}
            rollout: {strategy: canary, steps: [0]}
          world:
            template: {command: [a]}
            rollout: {strategy: canary}
            traffic:
              - {revision: world-00001, percent: 100}
        """,
    )
    assert [(p.path, p.line) for p in found] == [("services.hello.rollout.steps[0]", 4), ("services.world.rollout", 7)]


def test_sticky_is_for_rollouts_that_split_the_main_host() -> None:
    from ferry.routing.schema import Rollout

    assert Rollout(strategy="canary", sticky=True).sticky
    assert not Rollout(strategy="gradual").sticky
    with pytest.raises(ValueError, match="sticky is for canary and gradual rollouts"):
        Rollout(strategy="blue-green", sticky=True)
