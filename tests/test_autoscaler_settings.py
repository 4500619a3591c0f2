"""A template's scale block -> autoscaler Settings, and the schema's ranges agreeing with Settings' own checks."""

from __future__ import annotations

import math
from typing import Any

import pytest
from pydantic import ValidationError

from ferry.autoscaler.decision import Settings
from ferry.autoscaler.settings import settings_for
from ferry.routing import Template


def template(concurrency: int = 0, **scale: Any) -> Template:
    return Template(command=("app",), concurrency=concurrency, scale=scale)


def test_defaults_are_settings_defaults() -> None:
    s = settings_for(template())
    assert s == Settings(target=100.0)
    assert s.target_value == 70.0 and s.panic_window == 6
    assert settings_for(template(metric="rps")) == Settings(metric="rps", target=200.0)


def test_percentages_become_fractions_and_durations_seconds() -> None:
    s = settings_for(
        template(
            min=1,
            max=20,
            initial=3,
            target=50,
            metric="rps",
            utilization=85,
            activation=4,
            stableWindow="2m",
            panicWindowPercent=25,
            panicThreshold=350,
            maxScaleUpRate=10,
            maxScaleDownRate=4,
            zeroGracePeriod="1500ms",
            scaleDownDelay="5m",
            burstCapacity=-1,
        )
    )
    assert s == Settings(
        metric="rps",
        target=50.0,
        utilization=0.85,
        stable_window=120,
        panic_window_percent=25.0,
        panic_threshold=3.5,
        max_scale_up_rate=10.0,
        max_scale_down_rate=4.0,
        activation_scale=4,
        scale_down_delay=300.0,
        target_burst_capacity=-1.0,
        min_scale=1,
        max_scale=20,
        initial_scale=3,
        scale_to_zero_grace=1.5,
    )
    assert type(s.stable_window) is int and s.panic_window == 30


@pytest.mark.parametrize(
    ("concurrency", "scale", "total"),
    [
        (10, {}, 10.0),  # default 100 capped at containerConcurrency
        (10, {"target": 50}, 10.0),
        (10, {"target": 5}, 5.0),  # below the cap: kept
        (10, {"target": 10}, 10.0),
        (1, {"target": 0.5}, 0.5),
        (0, {"target": 500}, 500.0),  # 0 = unlimited: no cap
        (250, {"target": 500}, 250.0),
        (10, {"metric": "rps"}, 200.0),  # the cap is for the concurrency metric only
        (10, {"metric": "rps", "target": 50}, 50.0),
    ],
)
def test_target_is_capped_by_container_concurrency(concurrency: int, scale: dict[str, Any], total: float) -> None:
    s = settings_for(template(concurrency, **scale))
    assert s.target == total and s.total == total
    assert s.target_value == pytest.approx(total * 0.7)


def test_rps_default_target_is_200() -> None:
    s = settings_for(template(metric="rps"))
    assert (s.metric, s.target, s.target_value) == ("rps", 200.0, 140.0)


def test_an_unvalidated_scale_without_target_still_converts() -> None:
    t = Template.model_construct(
        command=("app",), concurrency=10, scale=template().scale.model_copy(update={"target": None})
    )
    assert settings_for(t).target == 10.0
    t = t.model_copy(update={"concurrency": 0})
    assert settings_for(t).target is None and settings_for(t).total == 100.0


# --- the schema and Settings agree at the edges -------------------------------------------------------------

# schema field -> (Settings argument, how settings_for converts it)
CONVERT: dict[str, tuple[str, Any]] = {
    "target": ("target", float),
    "utilization": ("utilization", lambda v: v / 100),
    "activation": ("activation_scale", int),
    "stableWindow": ("stable_window", lambda v: v),
    "panicWindowPercent": ("panic_window_percent", float),
    "panicThreshold": ("panic_threshold", lambda v: v / 100),
    "maxScaleUpRate": ("max_scale_up_rate", float),
    "maxScaleDownRate": ("max_scale_down_rate", float),
    "zeroGracePeriod": ("scale_to_zero_grace", float),
    "scaleDownDelay": ("scale_down_delay", float),
    "burstCapacity": ("target_burst_capacity", float),
    "min": ("min_scale", int),
    "max": ("max_scale", int),
    "initial": ("initial_scale", int),
}

up, down = math.inf, -math.inf
EDGES: dict[str, list[float]] = {
    "target": [0.01, math.nextafter(0.01, down), 0.0, -1.0, 1e9],
    "utilization": [100.0, math.nextafter(100.0, up), 1.0, math.nextafter(1.0, down), 0.7, 0.0, -1.0, 101.0],
    "activation": [1, 0, -1, 2, 10**6],
    "stableWindow": [6, 5, 5.999, 3600, 3601, 60],
    "panicWindowPercent": [1.0, math.nextafter(1.0, down), 100.0, math.nextafter(100.0, up), 0.0],
    "panicThreshold": [110.0, math.nextafter(110.0, down), 1000.0, math.nextafter(1000.0, up), 2.0],
    "maxScaleUpRate": [math.nextafter(1.0, up), 1.0, 0.5, 1e12],
    "maxScaleDownRate": [math.nextafter(1.0, up), 1.0, 0.0, 1e12],
    "zeroGracePeriod": [0.0, math.nextafter(0.0, down), -1.0, 1e9],
    "scaleDownDelay": [0, -1, 3600],
    "burstCapacity": [-1.0, math.nextafter(-1.0, down), math.nextafter(-1.0, up), -0.5, 0.0, -2.0, 1e12],
    "min": [0, -1],
    "max": [0, -1],
    "initial": [0, -1],
}


def schema_accepts(**scale: Any) -> bool:
    try:
        template(**scale)
    except ValidationError:
        return False
    return True


def settings_accept(**kwargs: Any) -> bool:
    try:
        Settings(**kwargs)
    except ValueError:
        return False
    return True


@pytest.mark.parametrize(("field", "value"), [(f, v) for f, values in EDGES.items() for v in values])
def test_schema_and_settings_agree_at_the_edges(field: str, value: float) -> None:
    name, convert = CONVERT[field]
    accepted = schema_accepts(**{field: value})
    assert accepted == settings_accept(**{name: convert(value)}), (field, value)
    if accepted:
        settings_for(template(**{field: value}))  # and the real conversion constructs


@pytest.mark.parametrize(
    ("scale", "settings"),
    [
        ({"min": 3, "max": 2}, {"min_scale": 3, "max_scale": 2}),
        ({"min": 2, "max": 2}, {"min_scale": 2, "max_scale": 2}),
        ({"min": 5, "max": 0}, {"min_scale": 5, "max_scale": 0}),
    ],
)
def test_min_max_agree(scale: dict[str, int], settings: dict[str, int]) -> None:
    assert schema_accepts(**scale) == settings_accept(**settings)


@pytest.mark.parametrize(
    "scale",
    [
        # Knative's rules the schema enforces and Settings does not check itself
        {"initial": 3, "max": 2},
        {"activation": 3, "max": 2},
        {"scaleDownDelay": 3601},  # Knative's maximum: 1h
        {"scaleDownDelay": 0.5},  # Knative: second precision only
        {"stableWindow": 60.5},
        # not finite: Settings takes them, decide() would overflow or compare against NaN
        {"maxScaleUpRate": math.inf},
        {"maxScaleDownRate": math.nan},
        {"burstCapacity": math.inf},
        {"target": math.inf},
        {"zeroGracePeriod": math.inf},
        {"scaleDownDelay": math.nan},
    ],
)
def test_schema_is_stricter_than_settings_where_knative_is(scale: dict[str, Any]) -> None:
    assert not schema_accepts(**scale)


def test_every_combination_of_accepted_edges_constructs_settings() -> None:
    """All lowest accepted values together, then all highest: the conversion never trips Settings' checks."""
    low = template(
        concurrency=1,
        target=0.01,
        utilization=1,
        activation=1,
        stableWindow=6,
        panicWindowPercent=1,
        panicThreshold=110,
        maxScaleUpRate=math.nextafter(1.0, up),
        maxScaleDownRate=math.nextafter(1.0, up),
        zeroGracePeriod=0,
        scaleDownDelay=0,
        burstCapacity=-1,
        min=0,
        max=0,
        initial=0,
    )
    high = template(
        concurrency=10**6,
        target=1e9,
        utilization=100,
        activation=10**6,
        stableWindow="1h",
        panicWindowPercent=100,
        panicThreshold=1000,
        maxScaleUpRate=1e12,
        maxScaleDownRate=1e12,
        zeroGracePeriod=1e9,
        scaleDownDelay="1h",
        burstCapacity=1e12,
        min=10**6,
        max=10**6,
        initial=10**6,
    )
    s = settings_for(low)
    assert (s.target_value, s.panic_threshold, s.panic_window) == (0.01, 1.1, 1)
    s = settings_for(high)
    assert (s.target, s.utilization, s.panic_threshold, s.stable_window, s.panic_window) == (
        10**6,
        1.0,
        10.0,
        3600,
        3600,
    )
