"""Tests for include.triggerflow.config.schema: the routing file's shape as pydantic models, and
the unknown-key / missing-key messages made from pydantic's errors."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from include.triggerflow.config import RoutingConfigError, load_routing
from include.triggerflow.config.schema import (
    CampaignShape,
    FrequencyCapShape,
    HandlerShape,
    IdentityShape,
    OptionTriggerShape,
    QuietHoursShape,
    RouteShape,
    RoutingFileShape,
    RulesShape,
    field_names,
    shape_problems,
)


def test_every_section_forbids_extra_keys() -> None:
    for shape in (RoutingFileShape, RouteShape, IdentityShape, RulesShape, FrequencyCapShape, QuietHoursShape,
                  CampaignShape, HandlerShape, OptionTriggerShape):
        assert shape.model_config.get("extra") == "forbid", shape.__name__


def test_field_names_are_the_file_keys_in_order() -> None:
    assert field_names(RouteShape) == (
        "name", "trigger_id", "template", "subject", "identity", "multiple_profiles", "profile_order", "rules",
        "products", "link_hosts", "allow_http", "links",
    )
    assert field_names(OptionTriggerShape) == ("name", "jsConnector")  # the alias, as written in JSON
    assert field_names(RulesShape) == ("suppress", "dedup_window", "validity", "frequency_cap", "quiet_hours")


def test_unknown_keys_in_file_order_then_one_missing_line() -> None:
    problems = shape_problems(FrequencyCapShape, {"per_": "1h", "mx": 3})
    assert problems == [
        "unknown key 'per_' (expected one of: max, per); did you mean 'per'?",
        "unknown key 'mx' (expected one of: max, per); did you mean 'max'?",
        "missing required keys: max, per",
    ]
    assert shape_problems(FrequencyCapShape, {"max": None, "per": None}) == []  # values are checked elsewhere


def test_non_string_keys_are_unknown_keys() -> None:
    assert shape_problems(QuietHoursShape, {"start": "21:00", "end": "08:00", 7: "x"}) == [
        "unknown key 7 (expected one of: start, end, default_timezone)"
    ]


def test_snake_case_of_an_aliased_key_is_unknown() -> None:
    assert shape_problems(OptionTriggerShape, {"name": "*", "js_connector": "x"}) == [
        "unknown key 'js_connector' (expected one of: name, jsConnector); did you mean 'jsConnector'?"
    ]


def test_top_level_lists_the_usual_keys_but_suggests_the_optional_ones(tmp_path: Path) -> None:
    path = tmp_path / "routing.yaml"
    path.write_text(textwrap.dedent("""\
        version: 1
        defualts: {}
        triggers: []
    """))
    with pytest.raises(RoutingConfigError) as info:
        load_routing(path, templates_dir=tmp_path)
    assert info.value.problems[0] == (
        f"{path}: unknown key 'defualts' (expected one of: version, triggers); did you mean 'defaults'?"
    )


def test_a_campaign_section_makes_triggers_optional(tmp_path: Path) -> None:
    path = tmp_path / "routing.yaml"
    path.write_text(json.dumps({"campaign": {"config_json": "", "handlers": {}}}))
    with pytest.raises(RoutingConfigError) as info:
        load_routing(path, templates_dir=tmp_path)
    assert info.value.problems == (
        f"{path}: missing required key: version",
        f"{path}: campaign.handlers: must map each Campaign jsConnector (e.g. \"cus:triggers.js\") to template, "
        "subject and identity, got an empty mapping",
        f"{path}: campaign.config_json: the option is empty; the option should start with '[' or '{{' (the JSON "
        "object with 'topics'; Campaign reports a JSON parse error, iRc=16384, for an unset option)",
    )
