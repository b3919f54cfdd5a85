"""Tests for include.triggerflow.config (loader, sections, templates): the shipped routing file, look-ups and every load-time check."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from include.triggerflow import DEFAULT_ROUTING_FILE, TEMPLATES_DIR
from include.triggerflow.config import (
    EVENT_FIELDS,
    PROFILE_IDENTITY_COLUMNS,
    ROUTING_FILE_ENV,
    IdentityRule,
    RoutingConfig,
    RoutingConfigError,
    TriggerRoute,
    load_routing,
)
from include.triggerflow.events import parse_envelope

CART_ID = "5c2c6a3e-2b8f-4d6e-9a51-7f0d3c9b1a01"
BROWSE_ID = "9e4b1f27-6c3d-4a8e-b2f5-0d7c8a6e3b02"


def routed(config: RoutingConfig, trigger_id: str) -> TriggerRoute:
    """The route for ``trigger_id``, which the test expects to exist."""
    route = config.route_for(trigger_id)
    assert route is not None, f"no route for {trigger_id!r}"
    return route



@pytest.fixture
def templates(tmp_path: Path) -> Path:
    """A templates dir with two complete template folders (cart, browse) and one incomplete (half)."""
    root = tmp_path / "templates"
    for folder in ("cart", "browse"):
        (root / folder).mkdir(parents=True)
        (root / folder / "email.html").write_text("<p>hi</p>")
        (root / folder / "email.txt").write_text("hi")
    (root / "half").mkdir()
    (root / "half" / "email.html").write_text("<p>hi</p>")
    return root


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "routing.yaml"
    path.write_text(textwrap.dedent(text))
    return path


VALID = """\
    version: 1
    triggers:
      - name: cart
        trigger_id: id-cart
        template: cart
        subject: "{{ profile.first_name }}, your cart"
        identity:
          dimension: eVar01
          profile_column: shopper_id
      - name: browse
        trigger_id: id-browse
        template: browse
        subject: "Still looking?"
        identity:
          field: mcId
          profile_column: ecid
"""


def load_error(tmp_path: Path, templates: Path, text: str) -> RoutingConfigError:
    path = write(tmp_path, text)
    with pytest.raises(RoutingConfigError) as info:
        load_routing(path, templates_dir=templates)
    return info.value


# -- the shipped file -----------------------------------------------------------------------------
def test_shipped_routing_loads_and_routes_both_demo_triggers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ROUTING_FILE_ENV, raising=False)
    config = load_routing()

    assert config.path == DEFAULT_ROUTING_FILE
    assert [route.name for route in config.routes] == ["cart_abandonment", "browse_abandonment"]
    cart = config.route_for(CART_ID)
    browse = config.route_for(BROWSE_ID)
    assert cart is not None and cart.template == "cart_abandonment"
    assert browse is not None and browse.template == "browse_abandonment"
    for route in (cart, browse):
        assert route.identity == IdentityRule(kind="dimension", key="eVar01", profile_column="shopper_id")
        assert (TEMPLATES_DIR / route.template / "email.html").is_file()
    assert config.describe() == {CART_ID: "cart_abandonment", BROWSE_ID: "browse_abandonment"}
    # Unconfigured triggers are ignored, not errors.
    assert config.route_for("00000000-0000-0000-0000-000000000000") is None


def test_env_var_overrides_default_path(
    tmp_path: Path, templates: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(tmp_path, VALID)
    monkeypatch.setenv(ROUTING_FILE_ENV, str(path))
    config = load_routing(templates_dir=templates)
    assert config.path == path
    assert config.describe() == {"id-cart": "cart", "id-browse": "browse"}


def test_explicit_path_beats_env_var(
    tmp_path: Path, templates: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(ROUTING_FILE_ENV, str(tmp_path / "nope.yaml"))
    path = write(tmp_path, VALID)
    assert load_routing(path, templates_dir=templates).path == path


def test_loaded_routes_are_typed(tmp_path: Path, templates: Path) -> None:
    config = load_routing(write(tmp_path, VALID), templates_dir=templates)
    assert config.routes == (
        TriggerRoute(
            name="cart",
            trigger_id="id-cart",
            template="cart",
            subject="{{ profile.first_name }}, your cart",
            identity=IdentityRule("dimension", "eVar01", "shopper_id"),
        ),
        TriggerRoute(
            name="browse",
            trigger_id="id-browse",
            template="browse",
            subject="Still looking?",
            identity=IdentityRule("field", "mcId", "ecid"),
        ),
    )


def test_catch_all_is_used_only_when_no_exact_route(tmp_path: Path, templates: Path) -> None:
    text = VALID.replace("trigger_id: id-browse", 'trigger_id: "*"')
    config = load_routing(write(tmp_path, text), templates_dir=templates)
    assert routed(config, "id-cart").name == "cart"
    assert routed(config, "anything-else").name == "browse"
    assert routed(config, "").name == "browse"
    assert config.route_for(None) is None
    assert config.route_for(12345) is None
    assert config.describe() == {"id-cart": "cart", "*": "browse"}


def test_route_for_without_catch_all_returns_none(tmp_path: Path, templates: Path) -> None:
    config = load_routing(write(tmp_path, VALID), templates_dir=templates)
    assert config.route_for("id-unknown") is None
    assert config.route_for(["id-cart"]) is None


def test_routing_config_is_frozen(tmp_path: Path, templates: Path) -> None:
    config = load_routing(write(tmp_path, VALID), templates_dir=templates)
    with pytest.raises(AttributeError):
        config.routes = ()  # type: ignore[misc]
    assert isinstance(config, RoutingConfig)


def test_identity_rule_extracts_dimension_and_field() -> None:
    event = parse_envelope(
        {
            "com.adobe.mcloud.pipeline.pipelineMessage": {
                "header": {"messageId": "msg-1"},
                "com.adobe.mcloud.protocol.trigger": {
                    "triggerId": CART_ID,
                    "mcId": " 0123ECID ",
                    "enrichments": {
                        "analyticsHitSummary": {
                            "dimensions": {" eVar01": {"type": "string", "data": ["", "SHOP-42", "SHOP-42"]}}
                        }
                    },
                },
            }
        }
    )
    assert IdentityRule("dimension", "eVar01", "shopper_id").extract(event) == "SHOP-42"
    assert IdentityRule("field", "mcId", "ecid").extract(event) == "0123ECID"
    assert IdentityRule("field", "messageId", "declared_id").extract(event) == "msg-1"
    assert IdentityRule("dimension", "eVar02", "shopper_id").extract(event) is None


def test_constants() -> None:
    assert PROFILE_IDENTITY_COLUMNS == ("customer_id", "email", "shopper_id", "ecid", "declared_id", "visitor_id")
    assert EVENT_FIELDS == ("mcId", "messageId")


# -- file-level errors ----------------------------------------------------------------------------
def test_missing_file(tmp_path: Path, templates: Path) -> None:
    path = tmp_path / "absent.yaml"
    with pytest.raises(RoutingConfigError) as info:
        load_routing(path, templates_dir=templates)
    assert str(info.value).startswith(f"{path}: routing file not found")


def test_yaml_syntax_error_reports_line_and_column(tmp_path: Path, templates: Path) -> None:
    error = load_error(tmp_path, templates, 'version: 1\ntriggers:\n  - name: "cart\n    template: x\n')
    message = str(error)
    assert message.startswith(f"{tmp_path / 'routing.yaml'}: YAML syntax error at line ")
    assert "line 5, column 1" in message
    assert "while scanning a quoted scalar" in message


def test_bare_star_trigger_id_explains_quoting(tmp_path: Path, templates: Path) -> None:
    error = load_error(tmp_path, templates, VALID.replace("trigger_id: id-browse", "trigger_id: *"))
    assert "YAML syntax error at line 11, column 18" in str(error)
    assert 'write trigger_id: "*" in quotes' in str(error)


def test_duplicate_yaml_key_is_an_error(tmp_path: Path, templates: Path) -> None:
    text = VALID.replace('subject: "Still looking?"', 'subject: "Still looking?"\n        subject: "Again"')
    error = load_error(tmp_path, templates, text)
    assert str(error) == (
        f"{tmp_path / 'routing.yaml'}: YAML error at line 14, column 5: while constructing a mapping; "
        "found duplicate key 'subject'"
    )
    assert "found duplicate key 'subject'" in str(error)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", "top level must be a mapping with 'version' and 'triggers', got an empty document"),
        ("- a\n- b\n", "top level must be a mapping with 'version' and 'triggers', got a list"),
        ("just text\n", "top level must be a mapping with 'version' and 'triggers', got a str"),
    ],
)
def test_top_level_must_be_a_mapping(tmp_path: Path, templates: Path, text: str, expected: str) -> None:
    error = load_error(tmp_path, templates, text)
    assert str(error) == f"{tmp_path / 'routing.yaml'}: {expected}"


@pytest.mark.parametrize(
    ("replacement", "expected"),
    [
        ("version: 2", "version must be 1, got 2"),
        ("version: '1'", "version must be 1, got '1'"),
        ("version: true", "version must be 1, got True"),
        ("", "missing required key: version"),
    ],
)
def test_version_must_be_1(tmp_path: Path, templates: Path, replacement: str, expected: str) -> None:
    text = textwrap.dedent(VALID).replace("version: 1", replacement, 1)
    error = load_error(tmp_path, templates, text)
    assert str(error) == f"{tmp_path / 'routing.yaml'}: {expected}"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("version: 1\n", "missing required key: triggers"),
        ("version: 1\ntriggers: []\n", "'triggers' is empty: configure at least one trigger"),
        ("version: 1\ntriggers:\n", "'triggers' is empty: configure at least one trigger"),
        ("version: 1\ntriggers: {name: cart}\n", "'triggers' must be a list of trigger entries, got dict"),
        ("version: 1\ntriggers: cart\n", "'triggers' must be a list of trigger entries, got str"),
    ],
)
def test_triggers_must_be_a_non_empty_list(tmp_path: Path, templates: Path, text: str, expected: str) -> None:
    error = load_error(tmp_path, templates, text)
    assert str(error) == f"{tmp_path / 'routing.yaml'}: {expected}"


def test_unknown_top_level_key_suggests_the_right_one(tmp_path: Path, templates: Path) -> None:
    text = textwrap.dedent(VALID).replace("triggers:", "trigers:", 1)
    error = load_error(tmp_path, templates, text)
    assert error.problems == (
        f"{tmp_path / 'routing.yaml'}: unknown key 'trigers' (expected one of: version, triggers); "
        "did you mean 'triggers'?",
        f"{tmp_path / 'routing.yaml'}: missing required key: triggers",
    )


# -- entry-level errors: each names the file, the entry index and name, and the problem -------------
def test_entry_must_be_a_mapping(tmp_path: Path, templates: Path) -> None:
    text = VALID.replace("    triggers:\n", "    triggers:\n      - just-a-string\n")
    error = load_error(tmp_path, templates, text)
    assert str(error) == f"{tmp_path / 'routing.yaml'}: triggers[0]: entry must be a mapping, got str"


def test_missing_required_keys(tmp_path: Path, templates: Path) -> None:
    text = """\
        version: 1
        triggers:
          - name: cart
            trigger_id: id-cart
            template: cart
    """
    error = load_error(tmp_path, templates, text)
    assert str(error) == (
        f"{tmp_path / 'routing.yaml'}: triggers[0] (cart): missing required keys: subject, identity"
    )


def test_unknown_entry_key_is_reported_with_suggestion(tmp_path: Path, templates: Path) -> None:
    text = VALID.replace('subject: "{{ profile.first_name }}, your cart"', 'subjet: "Hi"')
    error = load_error(tmp_path, templates, text)
    assert error.problems == (
        f"{tmp_path / 'routing.yaml'}: triggers[0] (cart): unknown key 'subjet' "
        "(expected one of: name, trigger_id, template, subject, identity, multiple_profiles, profile_order, rules, products, link_hosts, allow_http, links); did you mean 'subject'?",
        f"{tmp_path / 'routing.yaml'}: triggers[0] (cart): missing required key: subject",
    )


def test_unknown_identity_key(tmp_path: Path, templates: Path) -> None:
    text = VALID.replace("profile_column: ecid", "profile_column: ecid\n          profile_col: ecid")
    error = load_error(tmp_path, templates, text)
    assert str(error) == (
        f"{tmp_path / 'routing.yaml'}: triggers[1] (browse): identity: unknown key 'profile_col' "
        "(expected one of: dimension, field, profile_column); did you mean 'profile_column'?"
    )


@pytest.mark.parametrize("bad", ["Cart", "cart-abandonment", "cart abandonment", "''", "42x!", "[cart]"])
def test_name_pattern(tmp_path: Path, templates: Path, bad: str) -> None:
    error = load_error(tmp_path, templates, VALID.replace("name: browse", f"name: {bad}"))
    assert f"{tmp_path / 'routing.yaml'}: triggers[1]" in str(error)
    assert "must match [a-z0-9_]+" in str(error)
    assert len(error.problems) == 1


def test_name_must_be_unique(tmp_path: Path, templates: Path) -> None:
    error = load_error(tmp_path, templates, VALID.replace("name: browse", "name: cart"))
    assert str(error) == (
        f"{tmp_path / 'routing.yaml'}: triggers[1] (cart): name 'cart' is already used by triggers[0] (cart)"
    )


@pytest.mark.parametrize(
    ("value", "shown"), [("''", "''"), ("'   '", "'   '"), ("12345", "12345"), ("null", "None")]
)
def test_trigger_id_must_be_a_non_empty_string(
    tmp_path: Path, templates: Path, value: str, shown: str
) -> None:
    error = load_error(tmp_path, templates, VALID.replace("trigger_id: id-browse", f"trigger_id: {value}"))
    assert str(error) == (
        f"{tmp_path / 'routing.yaml'}: triggers[1] (browse): trigger_id must be a non-empty string "
        f'(the triggerType UID, or "*"), got {shown}'
    )


def test_trigger_id_must_be_unique(tmp_path: Path, templates: Path) -> None:
    error = load_error(tmp_path, templates, VALID.replace("trigger_id: id-browse", "trigger_id: id-cart"))
    assert str(error) == (
        f"{tmp_path / 'routing.yaml'}: triggers[1] (browse): trigger_id 'id-cart' is already routed by "
        "triggers[0] (cart)"
    )


def test_at_most_one_catch_all(tmp_path: Path, templates: Path) -> None:
    text = VALID.replace("trigger_id: id-browse", 'trigger_id: "*"').replace(
        "trigger_id: id-cart", "trigger_id: '*'"
    )
    error = load_error(tmp_path, templates, text)
    assert str(error) == (
        f"{tmp_path / 'routing.yaml'}: triggers[1] (browse): catch-all '*' is already routed by "
        "triggers[0] (cart)"
    )


def test_template_folder_must_exist(tmp_path: Path, templates: Path) -> None:
    error = load_error(tmp_path, templates, VALID.replace("template: browse", "template: browsing"))
    assert str(error) == (
        f"{tmp_path / 'routing.yaml'}: triggers[1] (browse): template 'browsing' has no folder "
        f"{templates / 'browsing'}"
    )


def test_template_folder_must_hold_both_files(tmp_path: Path, templates: Path) -> None:
    error = load_error(tmp_path, templates, VALID.replace("template: browse", "template: half"))
    assert str(error) == (
        f"{tmp_path / 'routing.yaml'}: triggers[1] (browse): template 'half': folder {templates / 'half'} "
        "has no email.txt"
    )


@pytest.mark.parametrize("bad", ["../cart", "cart/sub", "''", "123"])
def test_template_must_be_a_plain_folder_name(tmp_path: Path, templates: Path, bad: str) -> None:
    error = load_error(tmp_path, templates, VALID.replace("template: browse", f"template: {bad}"))
    message = str(error)
    assert message.startswith(f"{tmp_path / 'routing.yaml'}: triggers[1] (browse): template ")
    # "123" is a YAML int: neither a str nor a folder name
    assert "must be a folder name under" in message


def test_paths_inside_the_project_are_shown_relative() -> None:
    # The shipped file, with a templates dir that lacks the folders: the message reads like the docs.
    with pytest.raises(RoutingConfigError) as info:
        load_routing(DEFAULT_ROUTING_FILE, templates_dir=TEMPLATES_DIR / "missing")
    assert info.value.problems == (
        "include/routing.yaml: triggers[0] (cart_abandonment): template 'cart_abandonment' has no folder "
        "include/templates/missing/cart_abandonment",
        "include/routing.yaml: triggers[1] (browse_abandonment): template 'browse_abandonment' has no folder "
        "include/templates/missing/browse_abandonment",
    )


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ('""', "subject must be a non-empty string, got ''"),
        ("'   '", "subject must be a non-empty string, got '   '"),
        ("42", "subject must be a non-empty string, got 42"),
        ('"Hi\\nthere"', "subject must be a single line (it becomes the Subject header)"),
        (
            '"{{ profile.first_name }, your cart"',
            "subject is not a valid Jinja template: unexpected '}'",
        ),
        ('"{% if x %}open"', "subject is not a valid Jinja template: Unexpected end of template."),
        (
            '"{{ 5 | nosuchfilter }}"',
            "subject is not a valid Jinja template: No filter named 'nosuchfilter'.",
        ),
    ],
)
def test_subject_validation(tmp_path: Path, templates: Path, value: str, expected: str) -> None:
    error = load_error(tmp_path, templates, VALID.replace('subject: "Still looking?"', f"subject: {value}"))
    assert str(error).startswith(f"{tmp_path / 'routing.yaml'}: triggers[1] (browse): {expected}")
    assert len(error.problems) == 1


def test_subject_may_use_triggerflow_filters(tmp_path: Path, templates: Path) -> None:
    text = VALID.replace('subject: "Still looking?"', 'subject: "Save {{ 5 | money }} today"')
    config = load_routing(write(tmp_path, text), templates_dir=templates)
    assert config.routes[1].subject == "Save {{ 5 | money }} today"


IDENTITY_CASES = [
    (
        "identity:\n          dimension: eVar01\n          field: mcId\n          profile_column: ecid",
        "identity: has both 'dimension' and 'field': give exactly one",
    ),
    (
        "identity:\n          profile_column: ecid",
        "identity: needs exactly one of 'dimension' (e.g. eVar01) or 'field' (e.g. mcId)",
    ),
    (
        "identity:\n          field: triggerId\n          profile_column: ecid",
        "identity: field 'triggerId' is not one of: mcId, messageId",
    ),
    (
        "identity:\n          dimension: ''\n          profile_column: ecid",
        "identity: dimension must be a non-empty dimension name such as eVar01, got ''",
    ),
    (
        "identity:\n          field: mcId\n          profile_column: phone",
        "identity: profile_column 'phone' is not one of: customer_id, email, shopper_id, ecid, declared_id, visitor_id",
    ),
    (
        "identity:\n          field: mcId",
        "identity: missing required key: profile_column",
    ),
    (
        "identity: mcId",
        "identity: must be a mapping with 'dimension' or 'field' and 'profile_column', got str",
    ),
]


@pytest.mark.parametrize(("block", "expected"), IDENTITY_CASES)
def test_identity_validation(tmp_path: Path, templates: Path, block: str, expected: str) -> None:
    text = VALID.replace("identity:\n          field: mcId\n          profile_column: ecid", block)
    assert text != VALID
    error = load_error(tmp_path, templates, text)
    assert str(error) == f"{tmp_path / 'routing.yaml'}: triggers[1] (browse): {expected}"


def test_all_problems_are_reported_together(tmp_path: Path, templates: Path) -> None:
    text = (
        VALID.replace("name: cart", "name: Cart")
        .replace("template: browse", "template: nope")
        .replace("profile_column: ecid", "profile_column: phone")
    )
    error = load_error(tmp_path, templates, text)
    file = tmp_path / "routing.yaml"
    assert len(error.problems) == 3
    assert error.problems[0].startswith(f"{file}: triggers[0] (Cart): name 'Cart' must match")
    assert error.problems[1].startswith(f"{file}: triggers[1] (browse): template 'nope'")
    assert error.problems[2].startswith(f"{file}: triggers[1] (browse): identity: profile_column")
    assert str(error) == "\n".join(error.problems)
    assert isinstance(error, ValueError)
