"""Every kind of bad routes.yaml gets a precise error: file, line, YAML path, reason and fix."""

from __future__ import annotations

from pathlib import Path

import pytest

from ferry.routing import ConfigError, Problem, RevisionStore, load_routes, validate
from ferry.routing.errors import format_path, parse_path

from .helpers import only, problems, write_routes


def test_str_has_one_line_per_problem_with_file_line_and_path(tmp_path: Path) -> None:
    path = write_routes(
        tmp_path,
        """
        services:
          hello:
            template: {command: [a], concurrency: -1}
            traffic:
              - latestRevision: true
                percent: 101
    """,
    )
    with pytest.raises(ConfigError) as info:
        load_routes(path)
    assert str(info.value).splitlines() == [
        f"{path}:3: services.hello.template.concurrency: must be 0 or more, got -1",
        f"{path}:6: services.hello.traffic[0].percent: must be 100 or less, got 101",
    ]


def test_unknown_parts_are_left_out_of_the_rendering() -> None:
    assert (
        str(ConfigError("r.yaml", [Problem("", "boom", 1), Problem("a.b", "bad")]))
        == "r.yaml:1: boom\nr.yaml: a.b: bad"
    )
    assert str(ConfigError("", [Problem("a.b", "bad")])) == "a.b: bad"  # RevisionStore.plan knows no file


def test_bad_yaml_syntax_reports_the_line(tmp_path: Path) -> None:
    p = only(
        tmp_path,
        """
        services:
          hello:
            template:
              command: [a]
             bad: 1
    """,
    )
    assert (p.path, p.line) == ("", 5)
    assert "invalid YAML" in p.message and "indentation" in p.message


def test_tabs_get_a_hint(tmp_path: Path) -> None:
    p = only(tmp_path, "services:\n  hello:\n\ttemplate: {}\n")
    assert p.line == 3 and "tabs" in p.message


def test_top_level_must_be_a_mapping(tmp_path: Path) -> None:
    p = only(tmp_path, "- hello\n- world\n")
    assert (p.path, p.line) == ("", 1)
    assert "top level must be a mapping" in p.message and "got a list" in p.message


def test_duplicate_keys_are_errors_not_silently_merged(tmp_path: Path) -> None:
    p = only(
        tmp_path,
        """
        services:
          hello:
            template: {command: [a]}
          hello:
            template: {command: [b]}
    """,
    )
    assert (p.path, p.line) == ("services", 4)
    assert "duplicate key 'hello'" in p.message


def test_unknown_field_names_it_lists_allowed_and_guesses(tmp_path: Path) -> None:
    p = only(
        tmp_path,
        """
        services:
          hello:
            template:
              command: [a]
              concurency: 3
    """,
    )
    assert (p.path, p.line) == ("services.hello.template.concurency", 5)
    assert "unknown field 'concurency'" in p.message
    assert "did you mean 'concurrency'?" in p.message
    assert "allowed: name, command, endpoints, env, readiness, concurrency, timeout, responseStartTimeout, idleTimeout, scale" in p.message


def test_unknown_top_level_and_traffic_fields(tmp_path: Path) -> None:
    found = problems(
        tmp_path,
        """
        servces: {}
        services:
          hello:
            template: {command: [a]}
            traffic:
              - latestrevision: true
                percent: 100
    """,
    )
    assert [(p.path, p.line) for p in found] == [("servces", 1), ("services.hello.traffic[0].latestrevision", 6)]
    assert "did you mean 'services'?" in found[0].message
    assert "did you mean 'latestRevision'?" in found[1].message


def test_wrong_types_are_named_with_the_value(tmp_path: Path) -> None:
    found = problems(
        tmp_path,
        """
        services:
          hello:
            template:
              command: [a]
              concurrency: abc
              scale: {min: "2"}
            traffic:
              - latestRevision: "yes"
                percent: 100
    """,
    )
    by_path = {p.path: p for p in found}
    assert by_path["services.hello.template.concurrency"].message == "expected an integer, got 'abc'"
    assert by_path["services.hello.template.concurrency"].line == 5
    assert by_path["services.hello.template.scale.min"].message == (
        "expected an integer, got '2': remove the quotes to write an integer"
    )
    assert by_path["services.hello.traffic[0].latestRevision"].message == "expected true or false, got 'yes'"


def test_non_string_env_values_say_quote_it(tmp_path: Path) -> None:
    found = problems(
        tmp_path,
        """
        services:
          hello:
            template:
              command: [a]
              env:
                WORKERS: 4
                DEBUG: yes
    """,
    )
    assert [(p.path, p.line) for p in found] == [
        ("services.hello.template.env.WORKERS", 6),
        ("services.hello.template.env.DEBUG", 7),
    ]
    assert found[0].message == 'expected a string, got 4: YAML reads it as a number: put it in quotes, e.g. "4"'
    assert "got true" in found[1].message and "put the value in quotes" in found[1].message


def test_reserved_env_names(tmp_path: Path) -> None:
    p = only(
        tmp_path,
        """
        services:
          hello:
            template: {command: [a], env: {PORT: "80"}}
    """,
    )
    assert p.path == "services.hello.template.env.PORT"
    assert "set by ferry" in p.message


def test_command_written_as_a_string_gets_the_list_spelled_out(tmp_path: Path) -> None:
    p = only(
        tmp_path,
        """
        services:
          hello:
            template:
              command: python app.py
    """,
    )
    assert (p.path, p.line) == ("services.hello.template.command", 4)
    assert p.message == "expected a list, got 'python app.py': write it as a YAML list, e.g. [python, app.py]"


def test_percents_must_sum_to_100(tmp_path: Path) -> None:
    p = only(
        tmp_path,
        """
        services:
          hello:
            template: {command: [a]}
            traffic:
              - revision: hello-00001
                percent: 90
              - latestRevision: true
                percent: 20
    """,
    )
    assert (p.path, p.line) == ("services.hello.traffic", 4)
    assert p.message == (
        "percents sum to 110, they must sum to exactly 100: adjust the percents of services.hello.traffic"
    )


def test_empty_traffic_block(tmp_path: Path) -> None:
    p = only(
        tmp_path,
        """
        services:
          hello:
            template: {command: [a]}
            traffic: []
    """,
    )
    assert p.path == "services.hello.traffic" and "traffic is empty" in p.message


def test_percent_out_of_range(tmp_path: Path) -> None:
    found = problems(
        tmp_path,
        """
        services:
          hello:
            template: {command: [a]}
            traffic:
              - {latestRevision: true, percent: 110}
              - {revision: hello-00001, percent: -10}
    """,
    )
    assert [(p.path, p.line, p.message) for p in found] == [
        ("services.hello.traffic[0].percent", 5, "must be 100 or less, got 110"),
        ("services.hello.traffic[1].percent", 6, "must be 0 or more, got -10"),
    ]


def test_duplicate_tag(tmp_path: Path) -> None:
    p = only(
        tmp_path,
        """
        services:
          hello:
            template: {command: [a]}
            traffic:
              - {latestRevision: true, percent: 100, tag: current}
              - {revision: hello-00001, tag: current}
    """,
    )
    assert (p.path, p.line) == ("services.hello.traffic[1].tag", 6)
    assert "tag 'current' is already used by traffic[0]" in p.message and "unique" in p.message


def test_invalid_tag(tmp_path: Path) -> None:
    found = problems(
        tmp_path,
        """
        services:
          hello:
            template: {command: [a]}
            traffic:
              - {latestRevision: true, percent: 100, tag: Canary}
              - {revision: hello-00001, tag: 1st}
    """,
    )
    assert [(p.path, p.line) for p in found] == [
        ("services.hello.traffic[0].tag", 5),
        ("services.hello.traffic[1].tag", 6),
    ]
    assert "invalid tag 'Canary' (try 'canary')" in found[0].message
    assert "invalid tag '1st'" in found[1].message and "starting with a letter" in found[1].message


def test_tag_host_label_too_long(tmp_path: Path) -> None:
    tag = "t" * 60
    p = only(
        tmp_path,
        f"""
        services:
          hello:
            template: {{command: [a]}}
            traffic:
              - {{latestRevision: true, percent: 100, tag: {tag}}}
    """,
    )
    assert p.path == "services.hello.traffic[0].tag" and "at most 63" in p.message and "66 characters" in p.message


@pytest.mark.parametrize(
    ("target", "words"),
    [
        ("{revision: hello-00001, latestRevision: true, percent: 100}", "not both"),
        ("{percent: 100}", "names no revision"),
        ("{latestRevision: false, percent: 100}", "names no revision"),
    ],
)
def test_target_names_exactly_one_revision(tmp_path: Path, target: str, words: str) -> None:
    p = only(
        tmp_path,
        f"""
        services:
          hello:
            template: {{command: [a]}}
            traffic:
              - {target}
    """,
    )
    assert (p.path, p.line) == ("services.hello.traffic[0]", 5)
    assert words in p.message and "latestRevision: true" in p.message


def test_two_untagged_targets_on_one_revision(tmp_path: Path) -> None:
    found = problems(
        tmp_path,
        """
        services:
          hello:
            template: {command: [a]}
            traffic:
              - {revision: hello-00001, percent: 40}
              - {revision: hello-00001, percent: 30}
              - {latestRevision: true, percent: 20}
              - {latestRevision: true, percent: 10}
              - {revision: hello-00001, tag: old}
    """,
    )
    assert [(p.path, p.line) for p in found] == [("services.hello.traffic[1]", 6), ("services.hello.traffic[3]", 8)]
    assert found[0].message == (
        "traffic[0] already sends untagged traffic to revision hello-00001: "
        "merge the two targets into one with percent: 70"
    )
    assert "the latest ready revision" in found[1].message


@pytest.mark.parametrize(
    ("template", "words"),
    [
        ("{env: {A: b}}", "no command or endpoints"),
        ("{command: [a], endpoints: [127.0.0.1:9001]}", "not both"),
    ],
)
def test_exactly_one_of_command_and_endpoints(tmp_path: Path, template: str, words: str) -> None:
    p = only(
        tmp_path,
        f"""
        services:
          hello:
            template: {template}
    """,
    )
    assert (p.path, p.line) == ("services.hello.template", 3)
    assert words in p.message


def test_empty_command_and_endpoints(tmp_path: Path) -> None:
    found = problems(
        tmp_path,
        """
        services:
          hello:
            template: {command: []}
          world:
            template: {endpoints: []}
    """,
    )
    assert [(p.path, p.line) for p in found] == [
        ("services.hello.template.command", 3),
        ("services.world.template.endpoints", 5),
    ]
    assert found[0].message == "command is empty: give the program and its arguments, e.g. [python, app.py]"
    assert "endpoints is empty" in found[1].message


def test_missing_template(tmp_path: Path) -> None:
    p = only(
        tmp_path,
        """
        services:
          hello:
            hosts: [hello.example.com]
    """,
    )
    assert (p.path, p.line) == ("services.hello.template", 2)  # the nearest line that exists
    assert p.message == "required field 'template' is missing: add it"


def test_host_claimed_by_two_services_names_both(tmp_path: Path) -> None:
    p = only(
        tmp_path,
        """
        services:
          hello:
            hosts: [www.example.com]
            template: {command: [a]}
          world:
            hosts: [api.example.com, www.example.com]
            template: {command: [a]}
    """,
    )
    assert (p.path, p.line) == ("services.world.hosts[1]", 6)
    assert "host www.example.com is claimed by both service hello" in p.message
    assert "services.hello.hosts[0]" in p.message and "service world" in p.message


def test_tag_host_colliding_with_a_service_host(tmp_path: Path) -> None:
    p = only(
        tmp_path,
        """
        gateway: {domain: example.com}
        services:
          hello:
            template: {command: [a]}
            traffic:
              - {latestRevision: true, percent: 100, tag: canary}
          canary-hello:
            template: {command: [a]}
    """,
    )
    assert (p.path, p.line) == ("services.canary-hello", 7)
    assert "host canary-hello.example.com is claimed by both service hello (the host of its tag)" in p.message
    assert "services.hello.traffic[0].tag" in p.message


def test_extra_host_repeating_the_service_host(tmp_path: Path) -> None:
    p = only(
        tmp_path,
        """
        services:
          hello:
            hosts: [hello.localhost]
            template: {command: [a]}
    """,
    )
    assert p.path == "services.hello.hosts[0]" and "claimed by both service hello (its own host)" in p.message


def test_hosts_must_be_dns_names_without_port(tmp_path: Path) -> None:
    found = problems(
        tmp_path,
        """
        services:
          hello:
            hosts: ["www.example.com:8080", Www.Example.com, "bad_host.com"]
            template: {command: [a]}
    """,
    )
    assert [p.path for p in found] == ["services.hello.hosts[0]", "services.hello.hosts[1]", "services.hello.hosts[2]"]
    assert "has a port" in found[0].message and "'www.example.com'" in found[0].message
    assert "lowercase" in found[1].message
    assert "use a DNS name" in found[2].message


@pytest.mark.parametrize(
    ("listen", "words"),
    [
        ("127.0.0.1:70000", "port 70000 in '127.0.0.1:70000' is out of range: use a port from 1 to 65535"),
        ("127.0.0.1:0", "port 0 in '127.0.0.1:0' is out of range"),
        ("127.0.0.1", "add the port"),
        ("http://127.0.0.1:8080", "drop the scheme"),
        ("8080", "expected host:port, got 8080"),
    ],
)
def test_gateway_listen(tmp_path: Path, listen: str, words: str) -> None:
    p = only(tmp_path, f"gateway:\n  listen: {listen}\n")
    assert (p.path, p.line) == ("gateway.listen", 2)
    assert words in p.message


def test_endpoint_ports(tmp_path: Path) -> None:
    p = only(
        tmp_path,
        """
        services:
          hello:
            template:
              endpoints:
                - 127.0.0.1:9001
                - 127.0.0.1:99999
    """,
    )
    assert (p.path, p.line) == ("services.hello.template.endpoints[1]", 6)
    assert "port 99999" in p.message and "1 to 65535" in p.message


@pytest.mark.parametrize(
    ("timeout", "words"),
    [
        ("5 minutes", "invalid duration '5 minutes': write a number with a unit, e.g. 300s"),
        ("10x", "invalid duration '10x'"),
        ("0s", "must be greater than 0"),
        ("2h", "longer than the maximum of 1h"),
        ("true", "expected a duration, got true"),
    ],
)
def test_invalid_durations(tmp_path: Path, timeout: str, words: str) -> None:
    p = only(
        tmp_path,
        f"""
        services:
          hello:
            template:
              command: [a]
              timeout: {timeout}
    """,
    )
    assert (p.path, p.line) == ("services.hello.template.timeout", 5)
    assert words in p.message


@pytest.mark.parametrize("name", ["Hello", "1hello", "hello_world", "hello-", "h" * 64])
def test_invalid_service_names(tmp_path: Path, name: str) -> None:
    p = only(
        tmp_path,
        f"""
        services:
          {name}:
            template: {{command: [a]}}
    """,
    )
    assert (p.path, p.line) == (f"services.{name}", 2)
    assert f"invalid service name '{name}'" in p.message and "lowercase letters" in p.message


def test_template_name_needs_the_service_prefix(tmp_path: Path) -> None:
    p = only(
        tmp_path,
        """
        services:
          hello:
            template:
              name: world-v2
              command: [a]
    """,
    )
    assert (p.path, p.line) == ("services.hello.template.name", 4)
    assert (
        p.message
        == "revision name 'world-v2' must start with 'hello-' (the service name and a dash), e.g. 'hello-world-v2'"
    )


def test_scale_bounds_and_metric(tmp_path: Path) -> None:
    found = problems(
        tmp_path,
        """
        services:
          hello:
            template:
              command: [a]
              scale: {min: 5, max: 2}
          world:
            template:
              command: [a]
              scale: {metric: cpu, target: 0}
    """,
    )
    assert [(p.path, p.line) for p in found] == [
        ("services.hello.template.scale", 5),
        ("services.world.template.scale.target", 9),
        ("services.world.template.scale.metric", 9),
    ]
    assert "min 5 is greater than max 2" in found[0].message
    assert found[1].message == "must be 0.01 or more, got 0"
    assert found[2].message == "expected one of 'concurrency' or 'rps', got 'cpu'"


SCALE_FIELD = """
services:
  hello:
    template:
      command: [a]
      scale:
        {field}: {value}
"""  # the field is on line 6

WHOLE = "(Knative takes it with second precision only)"


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("target", "0", "must be 0.01 or more, got 0"),
        ("target", "0.005", "must be 0.01 or more, got 0.005"),
        ("target", ".inf", "expected a finite number, got inf: .inf and .nan are not allowed here"),
        ("utilization", "0", "must be 1 or more, got 0"),
        ("utilization", "-5", "must be 1 or more, got -5"),
        ("utilization", "0.7", "must be 1 or more, got 0.7: it is a percentage: write 70 for 70%"),
        ("utilization", "100.5", "must be 100 or less, got 100.5"),
        ("utilization", "7e1", "expected a number, got '7e1': YAML reads an exponent without a dot and a sign as text: write 70"),
        ("utilization", '"70"', "expected a number, got '70': remove the quotes to write a number"),
        ("utilization", "70%", "expected a number, got '70%'"),
        ("activation", "0", "must be 1 or more, got 0"),
        ("activation", "1.5", "expected an integer, got 1.5"),
        ("stableWindow", "5s", "stableWindow '5s' is shorter than the minimum of 6s: raise it, e.g. 60s"),
        ("stableWindow", "5999ms", "stableWindow '5999ms' is shorter than the minimum of 6s: raise it, e.g. 60s"),
        ("stableWindow", "0", "stableWindow 0 is shorter than the minimum of 6s: raise it, e.g. 60s"),
        ("stableWindow", "3601", "stableWindow 3601 is longer than the maximum of 1h (3600s): lower it"),
        ("stableWindow", "1h0m1s", "stableWindow '1h0m1s' is longer than the maximum of 1h (3600s): lower it"),
        ("stableWindow", "60.5s", f"stableWindow '60.5s' is not a whole number of seconds {WHOLE}: round it to 60s or 61s"),
        ("stableWindow", "6500ms", f"stableWindow '6500ms' is not a whole number of seconds {WHOLE}: round it to 6s or 7s"),
        ("stableWindow", ".inf", "stableWindow must be a finite duration, got inf: e.g. 60s"),
        ("stableWindow", "a minute", "invalid duration 'a minute': write a number with a unit, e.g. 300s, 1.5s, 500ms, 2m, 1h or 1m30s"),
        ("stableWindow", "yes", "expected a duration, got true: write a number with a unit, e.g. 300s, 1.5s, 500ms, 2m, 1h or 1m30s"),
        ("panicWindowPercent", "0", "must be 1 or more, got 0"),
        ("panicWindowPercent", "0.5", "must be 1 or more, got 0.5"),
        ("panicWindowPercent", "101", "must be 100 or less, got 101"),
        ("panicThreshold", "109.9", "must be 110 or more, got 109.9"),
        ("panicThreshold", "1001", "must be 1000 or less, got 1001"),
        ("panicThreshold", "2", "must be 110 or more, got 2: it is a percentage: write 200 for 2 times the ready instances"),
        ("panicThreshold", "2.5", "must be 110 or more, got 2.5: it is a percentage: write 250 for 2.5 times the ready instances"),
        ("maxScaleUpRate", "1", "must be greater than 1, got 1"),
        ("maxScaleUpRate", "0.5", "must be greater than 1, got 0.5"),
        ("maxScaleUpRate", ".inf", "expected a finite number, got inf: .inf and .nan are not allowed here"),
        ("maxScaleDownRate", "1", "must be greater than 1, got 1"),
        ("maxScaleDownRate", ".nan", "expected a finite number, got nan: .inf and .nan are not allowed here"),
        ("zeroGracePeriod", "-1", "zeroGracePeriod cannot be negative, got -1: e.g. 30s"),
        ("zeroGracePeriod", "-0.5", "zeroGracePeriod cannot be negative, got -0.5: e.g. 30s"),
        ("zeroGracePeriod", ".inf", "zeroGracePeriod must be a finite duration, got inf: e.g. 30s"),
        ("scaleDownDelay", "-1", "scaleDownDelay cannot be negative, got -1: e.g. 0s or 5m"),
        ("scaleDownDelay", "61m", "scaleDownDelay '61m' is longer than the maximum of 1h (3600s): lower it"),
        ("scaleDownDelay", "1.5s", f"scaleDownDelay '1.5s' is not a whole number of seconds {WHOLE}: round it to 1s or 2s"),
        ("burstCapacity", "-2", "must be 0 or more, or -1 for unlimited, got -2"),
        ("burstCapacity", "-0.5", "must be 0 or more, or -1 for unlimited, got -0.5"),
        ("burstCapacity", ".inf", "expected a finite number, got inf: .inf and .nan are not allowed here"),
        ("burstCapacity", "unlimited", "expected a number, got 'unlimited'"),
        ("burstCapacity", "1e-7", "expected a number, got '1e-7': YAML reads an exponent without a dot and a sign as text: write 1.0e-07"),
        ("burstCapacity", '"1.0e+3"', "expected a number, got '1.0e+3': remove the quotes to write a number"),
        ("activation", "2e0", "expected an integer, got '2e0': YAML reads an exponent without a dot and a sign as text: write 2"),
    ],
)
def test_scale_values_out_of_range(tmp_path: Path, field: str, value: str, message: str) -> None:
    path = write_routes(tmp_path, SCALE_FIELD.format(field=field, value=value))
    with pytest.raises(ConfigError) as info:
        load_routes(path)
    (p,) = info.value.problems
    assert (p.path, p.line, p.message) == (f"services.hello.template.scale.{field}", 6, message)
    assert str(info.value) == f"{path}:6: services.hello.template.scale.{field}: {message}"


def test_every_bad_scale_value_is_reported_in_one_pass(tmp_path: Path) -> None:
    found = problems(
        tmp_path,
        """
        services:
          hello:
            template:
              command: [a]
              scale:
                utilization: 0
                stableWindow: 2h
                panicThreshold: 100
                burstCapacity: -3
    """,
    )
    assert [(p.path, p.line) for p in found] == [
        ("services.hello.template.scale.utilization", 6),
        ("services.hello.template.scale.stableWindow", 7),
        ("services.hello.template.scale.panicThreshold", 8),
        ("services.hello.template.scale.burstCapacity", 9),
    ]


@pytest.mark.parametrize(
    ("scale", "message"),
    [
        ("{min: 3, max: 2}", "min 3 is greater than max 2: raise max or lower min (max 0 means unbounded)"),
        ("{max: 2, initial: 3}", "initial 3 is greater than max 2: lower initial or raise max (max 0 means unbounded)"),
        (
            "{max: 2, activation: 3}",
            "activation 3 is greater than max 2: lower activation or raise max (max 0 means unbounded)",
        ),
        (
            "{min: 4, max: 2, initial: 3, activation: 5}",
            (
                "min 4 is greater than max 2: raise max or lower min; initial 3 is greater than max 2: lower initial "
                "or raise max; activation 5 is greater than max 2: lower activation or raise max (max 0 means unbounded)"
            ),
        ),
    ],
)
def test_scale_cross_field_bounds(tmp_path: Path, scale: str, message: str) -> None:
    p = only(
        tmp_path,
        f"""
        services:
          hello:
            template:
              command: [a]
              scale: {scale}
    """,
    )
    assert (p.path, p.line, p.message) == ("services.hello.template.scale", 5, message)


@pytest.mark.parametrize(
    ("key", "guess"),
    [
        ("stable_window", "stableWindow"),
        ("stablewindow", "stableWindow"),
        ("StableWindow", "stableWindow"),
        ("panic_threshold", "panicThreshold"),
        ("scale-down-delay", "scaleDownDelay"),
        ("burst_capacity", "burstCapacity"),
        ("utilisation", "utilization"),
        # Knative's annotation names
        ("min-scale", "min"),
        ("max-scale", "max"),  # not maxScaleUpRate, the closer spelling
        ("initial-scale", "initial"),
        ("target-utilization-percentage", "utilization"),
        ("activation-scale", "activation"),
        ("window", "stableWindow"),
        ("panic-window-percentage", "panicWindowPercent"),
        ("panic-threshold-percentage", "panicThreshold"),
        ("max-scale-up-rate", "maxScaleUpRate"),
        ("scale-to-zero-grace-period", "zeroGracePeriod"),
        ("target-burst-capacity", "burstCapacity"),
    ],
)
def test_misspelled_scale_fields_get_a_guess(tmp_path: Path, key: str, guess: str) -> None:
    p = only(tmp_path, SCALE_FIELD.format(field=key, value="1"))
    assert (p.path, p.line) == (f"services.hello.template.scale.{key}", 6)
    assert p.message.startswith(f"unknown field '{key}'; did you mean '{guess}'? (allowed: min, max, initial, ")
    assert p.message.endswith(
        "utilization, activation, stableWindow, panicWindowPercent, panicThreshold, maxScaleUpRate, "
        "maxScaleDownRate, zeroGracePeriod, scaleDownDelay, burstCapacity)"
    )


def test_knative_annotation_keys_are_recognised(tmp_path: Path) -> None:
    p = only(tmp_path, SCALE_FIELD.format(field='"autoscaling.knative.dev/target-burst-capacity"', value="0"))
    assert p.path == 'services.hello.template.scale["autoscaling.knative.dev/target-burst-capacity"]'
    assert "did you mean 'burstCapacity'?" in p.message and p.line == 6


def test_knative_names_outside_scale_guess_ferrys_names(tmp_path: Path) -> None:
    p = only(tmp_path, "services:\n  hello:\n    template:\n      command: [a]\n      containerConcurrency: 1\n")
    assert (p.path, p.line) == ("services.hello.template.containerConcurrency", 5)
    assert "did you mean 'concurrency'?" in p.message


def test_misspelled_rollout_fields_get_a_guess(tmp_path: Path) -> None:
    found = problems(
        tmp_path,
        """
        services:
          hello:
            template: {command: [a]}
            rollout:
              strategy: blue-green
              autopromote: false
              analysis:
                failure_limit: 2
    """,
    )
    assert [(p.path, p.line, p.message) for p in found] == [
        (
            "services.hello.rollout.autopromote",
            6,
            "unknown field 'autopromote'; did you mean 'autoPromote'? "
            "(allowed: strategy, steps, interval, duration, analysis, autoPromote, sticky)",
        ),
        (
            "services.hello.rollout.analysis.failure_limit",
            8,
            "unknown field 'failure_limit'; did you mean 'failureLimit'? "
            "(allowed: minRequests, successRate, maxLatencyP99, failureLimit)",
        ),
    ]


def test_rollout_rules_are_reported_with_the_other_problems(tmp_path: Path) -> None:
    """A rollout's field rules, its traffic rules and everything else come back in one pass, in file order."""
    found = problems(
        tmp_path,
        """
        services:
          hello:
            template: {command: [a], timeout: soon}
            rollout: {strategy: gradual, steps: [5, 100]}
          world:
            template: {command: [a]}
            rollout:
              strategy: blue-green
              duration: 1m
            traffic:
              - {revision: world-00001, percent: 100, tag: preview}
          other:
            template: {command: [a]}
            rollout: {strategy: canary}
            traffic:
              - {revision: other-00001, percent: 100}
    """,
    )
    assert [(p.path, p.line, p.message) for p in found] == [
        ("services.hello.template.timeout", 3, "invalid duration 'soon': write a number with a unit, e.g. 300s, "
         "1.5s, 500ms, 2m, 1h or 1m30s"),
        ("services.hello.rollout.steps", 4, "steps are for strategy canary, not gradual: remove them or use "
         "strategy: canary"),
        ("services.world.rollout.duration", 9, "duration is for strategy gradual (Knative's rollout-duration), "
         "not blue-green: remove it (interval sets the time at each step) or use strategy: gradual"),
        ("services.other.rollout", 14, "traffic has no latestRevision: true target, so the new revision would "
         "never receive traffic once the rollout ends: add a latestRevision: true target to "
         "services.other.traffic or remove the rollout"),
    ]


def test_readiness_path_must_be_absolute(tmp_path: Path) -> None:
    p = only(
        tmp_path,
        """
        services:
          hello:
            template: {command: [a], readiness: {path: healthz}}
    """,
    )
    assert p.path == "services.hello.template.readiness.path" and "write '/healthz'" in p.message


def test_all_problems_are_collected_in_one_pass(tmp_path: Path) -> None:
    """Type errors in one service do not hide relationship errors in another, and lines come in file order."""
    found = problems(
        tmp_path,
        """
        gateway:
          listen: 127.0.0.1:0
        services:
          hello:
            template: {command: [a], timeout: soon}
          world:
            template: {command: [a]}
            traffic:
              - {latestRevision: true, percent: 50}
          other:
            hosts: [world.localhost]
            template: {command: [a]}
    """,
    )
    assert [(p.path, p.line) for p in found] == [
        ("gateway.listen", 2),
        ("services.hello.template.timeout", 5),
        ("services.world.traffic", 8),
        ("services.other.hosts[0]", 11),
    ]


def test_unreadable_and_non_utf8_files(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError) as info:
        load_routes(missing)
    assert info.value.file == str(missing) and "no such file" in info.value.problems[0].message
    bad = tmp_path / "latin1.yaml"
    bad.write_bytes(b"services:\n  hello:\n    template: {command: [caf\xe9]}\n")
    with pytest.raises(ConfigError) as info:
        load_routes(bad)
    assert info.value.problems[0].line == 3 and "UTF-8" in info.value.problems[0].message


def test_alias_cycles_and_bombs_are_refused(tmp_path: Path) -> None:
    assert "cycle" in only(tmp_path, "a: &a [*a]\n").message
    bomb = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    bomb += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 8)]
    assert "aliases expand" in only(tmp_path, "\n".join(bomb) + "\n").message


def test_unknown_revision_reference_lists_known_ones(tmp_path: Path) -> None:
    path = write_routes(
        tmp_path,
        """
        services:
          hello:
            template: {command: [a]}
          world:
            template: {command: [b]}
            traffic:
              - revision: world-00007
                percent: 50
              - revision: hello-00001
                percent: 50
    """,
    )
    with RevisionStore(tmp_path / ".ferry" / "state.db") as store, pytest.raises(ConfigError) as info:
        validate(load_routes(path), store)
    assert info.value.file == str(path)
    found = info.value.problems
    assert [(p.path, p.line) for p in found] == [
        ("services.world.traffic[0].revision", 7),
        ("services.world.traffic[1].revision", 9),
    ]
    assert found[0].message == (
        "revision world-00007 does not exist for service world; known revisions: world-00001: "
        "name one of them or use latestRevision: true"
    )
    assert "revision hello-00001 belongs to service hello, not world" in found[1].message


def test_byo_revision_name_conflict_has_a_line(tmp_path: Path) -> None:
    path = write_routes(
        tmp_path,
        """
        services:
          hello:
            template: {name: hello-v2, command: [a]}
    """,
    )
    with RevisionStore(tmp_path / "state.db") as store:
        store.commit(validate(load_routes(path), store))
        path.write_text(path.read_text().replace("[a]", "[b]"))
        with pytest.raises(ConfigError) as info:
            validate(load_routes(path), store)
    (p,) = info.value.problems
    assert (p.path, p.line) == ("services.hello.template.name", 3)
    assert p.message == (
        "revision hello-v2 already exists with a different template; revisions are immutable: "
        "choose a new template.name or remove it"
    )


@pytest.mark.parametrize(
    "loc",
    [
        (),
        ("services",),
        ("services", "hello", "traffic", 1, "percent"),
        ("services", "my.svc", "hosts", 0),
        ("a b", 'q"x'),
    ],
)
def test_paths_round_trip(loc: tuple[str | int, ...]) -> None:
    assert parse_path(format_path(loc)) == loc


def test_paths_read_like_yaml() -> None:
    assert format_path(("services", "hello", "traffic", 1, "percent")) == "services.hello.traffic[1].percent"
    assert format_path(("services", "my.svc")) == 'services["my.svc"]'
