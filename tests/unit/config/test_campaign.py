"""Tests for the Campaign side of include.triggerflow.config: a pasted NmsPipeline_Config option
(``load_campaign_json`` and the routing file's ``campaign`` section)."""

# Adobe's published sample below is kept byte for byte, trailing blanks included.
# ruff: noqa: W291

from __future__ import annotations

import json
import re
import textwrap
from pathlib import Path

import pytest

from include.triggerflow import TEMPLATES_DIR
from include.triggerflow.config import (
    CampaignConfig,
    CampaignConfigError,
    CampaignTopic,
    CampaignTrigger,
    IdentityRule,
    RoutingConfig,
    RoutingConfigError,
    TriggerRoute,
    load_campaign_json,
    load_routing,
)
from include.triggerflow.links import LinkPolicy

UID_1 = "3e8a2ba7-fccc-49bb-bdac-33ee33cf02bf"
UID_2 = "2da3fdff-13af-4c51-8ed0-05802a572e94"

# Adobe's sample, as published in campaign-classic.en help/integrations/using/nmspipeline-config.md
# ("Paste the JSON code from this template into the option value. Make sure to remove comments."):
# it has comments, and a trailing comma after the last trigger.
DOC_SAMPLE = """\
{
    "topics": [ // list of "topics" that the pipelined is listening to.
        {
            "name": "triggers", // Name of the first topic: triggers.
            "consumer": "customer_dev", // Name of the instance that listens. 
            "triggers": [ // Array of triggers. 
                {
                    "name": "3e8a2ba7-fccc-49bb-bdac-33ee33cf02bf", // TriggerType ID from Analytics 
                    "jsConnector": "cus:triggers.js" // Javascript library holding the processing function.
                }, {
                    "name": "2da3fdff-13af-4c51-8ed0-05802a572e94", // Second TriggerType ID 
                    "jsConnector": "cus:triggers.js" // Can use the same JS for all.
                },
            ]
        }
    ]
}
"""
SAMPLE_NO_COMMENTS = re.sub(r" *//[^\n]*", "", DOC_SAMPLE)
SAMPLE_VALID = SAMPLE_NO_COMMENTS.replace("},\n            ]", "}\n            ]")

# Adobe's second sample: the catch-all.
CATCH_ALL_SAMPLE = """\
{
 "topics": [
    {
      "name": "triggers",
      "consumer":  "customer_dev",
      "triggers": [
        {
          "name": "*",
          "jsConnector": "cus:pipeline.js"
        }
      ]
    }
 ]
 }
"""


def routed(config: RoutingConfig, trigger_id: str) -> TriggerRoute:
    """The route for ``trigger_id``, which the test expects to exist."""
    route = config.route_for(trigger_id)
    assert route is not None, f"no route for {trigger_id!r}"
    return route



def option(*topics: dict) -> str:
    return json.dumps({"topics": list(topics)}, indent=2)


def triggers_topic(*triggers: dict, consumer: str = "customer_dev") -> dict:
    return {"name": "triggers", "consumer": consumer, "triggers": list(triggers)}


def errors(text_or_path) -> tuple[str, ...]:
    with pytest.raises(CampaignConfigError) as info:
        load_campaign_json(text_or_path)
    assert isinstance(info.value, RoutingConfigError)  # one exception family for every config error
    return info.value.problems


# -- load_campaign_json: the pasted option ---------------------------------------------------------
def test_adobe_doc_sample_is_rejected_at_its_first_comment(tmp_path: Path) -> None:
    path = tmp_path / "nms_pipeline_config.json"
    path.write_text(DOC_SAMPLE)
    assert errors(path) == (
        f"{path}: line 2, column 17: invalid JSON (Expecting value); "
        "remove comments: the option must be strict JSON",
    )


def test_trailing_comma_points_at_the_comma(tmp_path: Path) -> None:
    path = tmp_path / "nms.json"
    path.write_text(SAMPLE_NO_COMMENTS)
    # the comma closing the second trigger, before "]"
    line13 = SAMPLE_NO_COMMENTS.splitlines()[12]
    assert line13.rstrip().endswith("},") and len(line13.rstrip()) == 18
    assert errors(path) == (
        f"{path}: line 14, column 13: invalid JSON (Expecting value); trailing comma: remove the ',' at "
        "line 13, column 18 (strict JSON allows no comma before ']')",
    )


def test_trailing_comma_in_an_object_and_block_comment() -> None:
    assert errors('{"topics": [],\n}') == (
        "NmsPipeline_Config: line 2, column 1: invalid JSON (Expecting property name enclosed in double "
        "quotes); trailing comma: remove the ',' at line 1, column 14 (strict JSON allows no comma before '}')",
    )
    problems = errors('{"topics": /* the topics */ []}')
    assert problems[0].startswith("NmsPipeline_Config: line 1, column 12: invalid JSON")
    assert problems[0].endswith("; remove comments: the option must be strict JSON")


def test_adobe_doc_sample_without_comments_and_comma_loads(tmp_path: Path) -> None:
    path = tmp_path / "nms.json"
    path.write_text(SAMPLE_VALID)
    for source in (path, str(path), SAMPLE_VALID):
        config = load_campaign_json(source)
        assert config == CampaignConfig(
            origin=str(path) if source != SAMPLE_VALID else "NmsPipeline_Config",
            topics=(
                CampaignTopic(
                    name="triggers",
                    consumer="customer_dev",
                    path="topics[0]",
                    triggers=(
                        CampaignTrigger(UID_1, "cus:triggers.js", "topics[0].triggers[0]"),
                        CampaignTrigger(UID_2, "cus:triggers.js", "topics[0].triggers[1]"),
                    ),
                ),
            ),
        )
    assert config.consumer == "customer_dev"
    assert config.consumers == ("customer_dev",)
    assert [t.name for t in config.triggers] == [UID_1, UID_2]
    assert config.aliases is None
    assert config.routing_map() == {"triggers": {UID_1: "cus:triggers.js", UID_2: "cus:triggers.js"}}


def test_catch_all_sample_loads() -> None:
    config = load_campaign_json(CATCH_ALL_SAMPLE)
    assert config.routing_map() == {"triggers": {"*": "cus:pipeline.js"}}
    assert config.consumer == "customer_dev"


def test_aliases_topic_is_accepted_and_reported() -> None:
    text = option(
        triggers_topic({"name": UID_1, "jsConnector": "cus:triggers.js"}),
        {"name": "aliases", "consumer": "customer_dev_aliases", "triggers": [{"name": "*", "jsConnector": ""}]},
    )
    config = load_campaign_json(text)
    assert config.aliases == (CampaignTrigger("*", "", "topics[1].triggers[0]"),)
    assert config.triggers == (CampaignTrigger(UID_1, "cus:triggers.js", "topics[0].triggers[0]"),)
    assert config.consumer == "customer_dev"
    assert config.consumers == ("customer_dev", "customer_dev_aliases")
    assert config.routing_map() == {"triggers": {UID_1: "cus:triggers.js"}, "aliases": {"*": ""}}
    # an aliases topic without triggers or consumer is accepted too (its content is not documented)
    bare = load_campaign_json(option(triggers_topic({"name": "*", "jsConnector": "x"}), {"name": "aliases"}))
    assert bare.routing_map() == {"triggers": {"*": "x"}, "aliases": {}}


@pytest.mark.parametrize("text", ["", "   \n\t ", "\ufeff"])
def test_empty_option_gives_campaigns_message(text: str, tmp_path: Path) -> None:
    expected = (
        "the option is empty; the option should start with '[' or '{' (the JSON object with 'topics'; "
        "Campaign reports a JSON parse error, iRc=16384, for an unset option)"
    )
    assert errors(text) == (f"NmsPipeline_Config: {expected}",)
    path = tmp_path / "empty.json"
    path.write_text(text)
    assert errors(path) == (f"{path}: {expected}",)


def test_text_that_is_not_json_at_all() -> None:
    assert errors("topics: triggers") == (
        "NmsPipeline_Config: line 1, column 1: invalid JSON (Expecting value); the option should start with '[' or '{'",
    )


def test_a_missing_file_is_named(tmp_path: Path) -> None:
    assert errors(str(tmp_path / "absent.json")) == (f"{tmp_path / 'absent.json'}: NmsPipeline_Config file not found",)
    assert errors(tmp_path / "absent") == (f"{tmp_path / 'absent'}: NmsPipeline_Config file not found",)


def test_bom_is_tolerated(tmp_path: Path) -> None:
    path = tmp_path / "bom.json"
    path.write_bytes(b"\xef\xbb\xbf" + CATCH_ALL_SAMPLE.encode())
    assert load_campaign_json(path).routing_map() == {"triggers": {"*": "cus:pipeline.js"}}


def test_structural_errors_name_their_path() -> None:
    text = option(
        {
            "name": "triggers",
            "triggers": [
                {"name": UID_1, "jsConnector": "cus:triggers.js"},
                {"name": "", "jsConnector": "cus:triggers.js"},
                {"name": UID_2},
                "not-an-object",
                {"name": UID_2, "jsConnector": 7, "priority": 1},
            ],
        },
        {"name": "offers", "consumer": "x", "triggers": []},
    )
    assert errors(text) == (
        "NmsPipeline_Config: topics[0]: missing 'consumer' (the instance name Pipeline keeps this reader's offsets under)",
        "NmsPipeline_Config: topics[0].triggers[1]: 'name' must be a non-empty string (the trigger UID, or \"*\"), got \"\"",
        "NmsPipeline_Config: topics[0].triggers[2]: missing 'jsConnector'",
        "NmsPipeline_Config: topics[0].triggers[3]: a trigger must be an object with 'name' and 'jsConnector', got string",
        "NmsPipeline_Config: topics[0].triggers[4]: unknown key 'priority' (expected one of: name, jsConnector); "
        "triggerflow does not support it: remove it",
        f"NmsPipeline_Config: topics[0].triggers[4]: trigger '{UID_2}' is already listed at topics[0].triggers[2]",
        "NmsPipeline_Config: topics[0].triggers[4]: 'jsConnector' must be a string, got 7",
        "NmsPipeline_Config: topics[1]: unknown topic name 'offers': pipelined reads 'triggers' and 'aliases'",
    )


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ([], "top level must be an object with 'topics', got array"),
        ("topics", "top level must be an object with 'topics', got string"),
        ({}, "missing 'topics' (expected {\"topics\": [{\"name\": \"triggers\", ...}]})"),
        ({"topics": {"name": "triggers"}}, "topics: must be an array of topics, got object"),
        (
            {"topics": []},
            "topics: no topic named 'triggers': pipelined would process nothing "
            '(add {"name": "triggers", "consumer": "<instance>", "triggers": [...]})',
        ),
        ({"topics": [triggers_topic()]}, 'topics[0].triggers: is empty: list at least one trigger (or "*")'),
        ({"topics": [{"name": "triggers", "consumer": ""}]}, "topics[0]: 'consumer' must be a non-empty string, got \"\""),
        ({"topics": [42]}, "topics[0]: a topic must be an object, got number"),
        ({"topic": [], "topics": [triggers_topic({"name": "*", "jsConnector": "j"})]},
         "unknown key 'topic' (expected one of: topics); did you mean 'topics'?"),
    ],
)
def test_structure_errors(value, expected: str) -> None:
    assert expected in [p.removeprefix("NmsPipeline_Config: ") for p in errors(json.dumps(value))]


def test_duplicate_trigger_ids_and_catch_alls() -> None:
    text = option(
        triggers_topic(
            {"name": "*", "jsConnector": "a.js"},
            {"name": UID_1, "jsConnector": "a.js"},
            {"name": f" {UID_1} ", "jsConnector": "b.js"},
            {"name": "*", "jsConnector": "b.js"},
        )
    )
    assert errors(text) == (
        f"NmsPipeline_Config: topics[0].triggers[2]: trigger '{UID_1}' is already listed at topics[0].triggers[1]",
        "NmsPipeline_Config: topics[0].triggers[3]: catch-all '*' is already listed at topics[0].triggers[0]",
    )


def test_repeated_keys_and_topics_are_errors() -> None:
    text = '{"topics": [{"name": "triggers", "consumer": "a", "consumer": "b", "triggers": [{"name": "*", "jsConnector": "j"}]},' \
           ' {"name": "triggers", "consumer": "c", "triggers": [{"name": "x", "jsConnector": "j"}]}]}'
    assert errors(text) == (
        "NmsPipeline_Config: topics[0]: key 'consumer' appears more than once in this object",
        "NmsPipeline_Config: topics[1]: topic 'triggers' is already defined at topics[0]",
    )


# -- the routing file's campaign section ----------------------------------------------------------
HANDLERS = """\
campaign:
  config: nms.json
  handlers:
    "cus:triggers.js":
      template: cart_abandonment
      subject: "{{ profile.first_name }}, your cart"
      identity: {dimension: eVar01, profile_column: shopper_id}
      link_hosts: [shop.example.com]
    "cus:pipeline.js":
      template: browse_abandonment
      subject: "Still looking?"
      identity: {field: mcId, profile_column: ecid}
      link_hosts: [shop.example.com]
"""

YAML_ROUTE = """\
triggers:
  - name: cart
    trigger_id: id-cart
    template: cart_abandonment
    subject: "Your cart"
    identity: {dimension: eVar01, profile_column: shopper_id}
    link_hosts: [shop.example.com]
"""


def write(tmp_path: Path, yaml_text: str, option_text: str | None = SAMPLE_VALID) -> Path:
    if option_text is not None:
        (tmp_path / "nms.json").write_text(option_text)
    path = tmp_path / "routing.yaml"
    path.write_text("version: 1\n" + textwrap.dedent(yaml_text))
    return path


def routing_errors(path: Path) -> tuple[str, ...]:
    with pytest.raises(RoutingConfigError) as info:
        load_routing(path, templates_dir=TEMPLATES_DIR)
    return info.value.problems


CART = IdentityRule("dimension", "eVar01", "shopper_id")
SHOP_LINKS = LinkPolicy.of(["shop.example.com"])


def test_campaign_option_file_becomes_routes(tmp_path: Path) -> None:
    config = load_routing(write(tmp_path, HANDLERS), templates_dir=TEMPLATES_DIR)

    assert config.routes == (
        TriggerRoute("campaign_3e8a2ba7", UID_1, "cart_abandonment", "{{ profile.first_name }}, your cart", CART, handler="cus:triggers.js",
                     link_policy=SHOP_LINKS),
        TriggerRoute("campaign_2da3fdff", UID_2, "cart_abandonment", "{{ profile.first_name }}, your cart", CART, handler="cus:triggers.js",
                     link_policy=SHOP_LINKS),
    )
    assert routed(config, UID_1).name == "campaign_3e8a2ba7"
    assert routed(config, UID_2).template == "cart_abandonment"
    assert config.route_for("another-trigger") is None  # only configured triggers are processed
    assert config.campaign_consumer == "customer_dev"
    assert config.campaign is not None and config.campaign.origin == str(tmp_path / "nms.json")
    # Campaign's routing map: trigger -> JS connector
    assert config.describe() == {UID_1: "cus:triggers.js", UID_2: "cus:triggers.js"}
    assert config.routing_map() == {"triggers": {UID_1: "cus:triggers.js", UID_2: "cus:triggers.js"}}


def test_campaign_and_yaml_routes_together_with_catch_all_and_aliases(tmp_path: Path) -> None:
    text = option(
        triggers_topic({"name": "*", "jsConnector": "cus:pipeline.js"}, consumer="shop_prod"),
        {"name": "aliases", "consumer": "shop_prod", "triggers": [{"name": "*", "jsConnector": ""}]},
    )
    config = load_routing(write(tmp_path, YAML_ROUTE + HANDLERS, text), templates_dir=TEMPLATES_DIR)

    assert [(r.name, r.trigger_id, r.handler) for r in config.routes] == [
        ("cart", "id-cart", None),
        ("campaign_all", "*", "cus:pipeline.js"),
    ]
    assert routed(config, "id-cart").name == "cart"  # the exact id first
    catch_all = routed(config, "anything-else")
    assert (catch_all.name, catch_all.template, catch_all.identity) == (
        "campaign_all", "browse_abandonment", IdentityRule("field", "mcId", "ecid")
    )
    assert config.campaign_consumer == "shop_prod"
    assert config.describe() == {"id-cart": "cart_abandonment", "*": "cus:pipeline.js"}
    assert config.routing_map() == {
        "triggers": {"id-cart": "cart_abandonment", "*": "cus:pipeline.js"},
        "aliases": {"*": ""},
    }


def test_inline_config_json(tmp_path: Path) -> None:
    inline = HANDLERS.replace(
        "  config: nms.json\n",
        "  config_json: '" + json.dumps(json.loads(CATCH_ALL_SAMPLE)) + "'\n",
    )
    config = load_routing(write(tmp_path, inline, option_text=None), templates_dir=TEMPLATES_DIR)
    assert [(r.name, r.trigger_id, r.template) for r in config.routes] == [("campaign_all", "*", "browse_abandonment")]
    assert config.campaign is not None
    assert config.campaign.origin == f"{tmp_path / 'routing.yaml'}: campaign.config_json"


def test_inline_config_json_errors_say_where(tmp_path: Path) -> None:
    inline = HANDLERS.replace("  config: nms.json\n", "  config_json: |\n    {\"topics\": [\n      // no\n    ]}\n")
    assert routing_errors(write(tmp_path, inline, option_text=None)) == (
        f"{tmp_path / 'routing.yaml'}: campaign.config_json: line 2, column 3: invalid JSON (Expecting value); "
        "remove comments: the option must be strict JSON",
    )
    empty = HANDLERS.replace("  config: nms.json\n", "  config_json: ''\n")
    [problem] = routing_errors(write(tmp_path, empty, option_text=None))
    assert problem.startswith(f"{tmp_path / 'routing.yaml'}: campaign.config_json: the option is empty; ")
    assert "should start with '[' or '{'" in problem


def test_option_file_errors_name_the_option_file(tmp_path: Path) -> None:
    assert routing_errors(write(tmp_path, HANDLERS, DOC_SAMPLE)) == (
        f"{tmp_path / 'nms.json'}: line 2, column 17: invalid JSON (Expecting value); "
        "remove comments: the option must be strict JSON",
    )
    assert routing_errors(write(tmp_path, HANDLERS.replace("nms.json", "missing.json"))) == (
        f"{tmp_path / 'routing.yaml'}: campaign.config: {tmp_path / 'missing.json'}: NmsPipeline_Config file not found",
    )


def test_option_path_is_relative_to_the_routing_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sub = tmp_path / "conf"
    sub.mkdir()
    path = write(sub, HANDLERS)
    monkeypatch.chdir(tmp_path)  # not where nms.json is
    assert len(load_routing(path, templates_dir=TEMPLATES_DIR).routes) == 2


def test_unknown_js_connector_lists_the_handlers(tmp_path: Path) -> None:
    text = option(
        triggers_topic({"name": UID_1, "jsConnector": "cus:trigger.js"}, {"name": UID_2, "jsConnector": "nl:xyz"})
    )
    assert routing_errors(write(tmp_path, HANDLERS, text)) == (
        f"{tmp_path / 'nms.json'}: topics[0].triggers[0]: jsConnector 'cus:trigger.js' has no handler in "
        f"{tmp_path / 'routing.yaml'}: campaign.handlers (defined: 'cus:triggers.js', 'cus:pipeline.js'); "
        "did you mean 'cus:triggers.js'?",
        f"{tmp_path / 'nms.json'}: topics[0].triggers[1]: jsConnector 'nl:xyz' has no handler in "
        f"{tmp_path / 'routing.yaml'}: campaign.handlers (defined: 'cus:triggers.js', 'cus:pipeline.js')",
    )


def test_trigger_routed_by_yaml_and_campaign_is_a_conflict(tmp_path: Path) -> None:
    yaml_text = YAML_ROUTE.replace("id-cart", UID_2) + HANDLERS
    assert routing_errors(write(tmp_path, yaml_text)) == (
        f"{tmp_path / 'nms.json'}: topics[0].triggers[1]: trigger_id '{UID_2}' is routed both here and by "
        f"{tmp_path / 'routing.yaml'}: triggers[0] (cart); keep one",
    )
    both_catch_all = YAML_ROUTE.replace("id-cart", '"*"') + HANDLERS
    text = option(triggers_topic({"name": "*", "jsConnector": "cus:triggers.js"}))
    [problem] = routing_errors(write(tmp_path, both_catch_all, text))
    assert problem.endswith(f"topics[0].triggers[0]: catch-all '*' is routed both here and by {tmp_path / 'routing.yaml'}: triggers[0] (cart); keep one")


def test_generated_route_names_are_unique(tmp_path: Path) -> None:
    text = option(
        triggers_topic(
            {"name": "3e8a2ba7-0000-0000-0000-000000000001", "jsConnector": "cus:triggers.js"},
            {"name": "3e8a2ba7-0000-0000-0000-000000000002", "jsConnector": "cus:triggers.js"},
            {"name": "LogoUpload_2_uploading_Visits", "jsConnector": "cus:triggers.js"},
        )
    )
    yaml_text = YAML_ROUTE.replace("name: cart", "name: campaign_logouplo") + HANDLERS
    config = load_routing(write(tmp_path, yaml_text, text), templates_dir=TEMPLATES_DIR)
    assert [r.name for r in config.routes] == [
        "campaign_logouplo",  # the YAML route keeps its name
        "campaign_3e8a2ba7",
        "campaign_3e8a2ba7_0000_0000_0000_000000000002",
        "campaign_logoupload_2_uploading_visits",
    ]
    assert all(re.fullmatch(r"[a-z0-9_]+", r.name) and len(r.name) <= 100 for r in config.routes)


def test_handler_problems_are_reported_and_its_triggers_skipped(tmp_path: Path) -> None:
    yaml_text = HANDLERS.replace("template: cart_abandonment", "template: cart").replace(
        "profile_column: ecid", "profile_column: phone"
    )
    assert routing_errors(write(tmp_path, yaml_text)) == (
        f"{tmp_path / 'routing.yaml'}: campaign.handlers['cus:triggers.js']: template 'cart' has no folder "
        f"{(TEMPLATES_DIR / 'cart').relative_to(TEMPLATES_DIR.parents[1])}",
        f"{tmp_path / 'routing.yaml'}: campaign.handlers['cus:pipeline.js']: identity: profile_column 'phone' "
        "is not one of: customer_id, email, shopper_id, ecid, declared_id, visitor_id",
    )


@pytest.mark.parametrize(
    ("section", "expected"),
    [
        ("campaign: nms.json\n", "campaign: must be a mapping with 'config' (a file) or 'config_json' (inline) and 'handlers', got str"),
        ("campaign:\n  config: nms.json\n", "campaign: missing required key: handlers"),
        (
            "campaign:\n  config: nms.json\n  handlers: {}\n",
            "campaign.handlers: must map each Campaign jsConnector (e.g. \"cus:triggers.js\") to template, "
            "subject and identity, got an empty mapping",
        ),
        (HANDLERS.replace("  config: nms.json\n", ""), "campaign: needs 'config' (a file holding the NmsPipeline_Config value) or 'config_json' (the value inline)"),
        (HANDLERS.replace("  config: nms.json\n", "  config: nms.json\n  config_json: '{}'\n"), "campaign: has both 'config' and 'config_json': give exactly one"),
        (HANDLERS.replace("  config: nms.json\n", "  config_json: {topics: []}\n"), "campaign.config_json: must be the option value as a string (quote it, or use a '|' block), got dict"),
        (HANDLERS.replace("  config: nms.json\n", "  config: nms.json\n  handler: x\n"), "campaign: unknown key 'handler' (expected one of: config, config_json, handlers); did you mean 'handlers'?"),
        (HANDLERS.replace('    "cus:pipeline.js":\n', '    "cus:pipeline.js": x\n    "cus:other.js":\n'), "campaign.handlers['cus:pipeline.js']: must be a mapping with template, subject, identity, got str"),
    ],
)
def test_campaign_section_validation(tmp_path: Path, section: str, expected: str) -> None:
    problems = routing_errors(write(tmp_path, section))
    assert f"{tmp_path / 'routing.yaml'}: {expected}" in problems


def test_top_level_keys_with_campaign(tmp_path: Path) -> None:
    # `triggers` is optional with `campaign` (even present and empty); `version` is still required
    assert len(load_routing(write(tmp_path, "triggers: []\n" + HANDLERS), templates_dir=TEMPLATES_DIR).routes) == 2
    path = tmp_path / "routing.yaml"
    path.write_text(HANDLERS)
    assert routing_errors(path) == (f"{path}: missing required key: version",)
    # a typo of `campaign` is suggested, while the listed keys stay those of a plain file
    assert routing_errors(write(tmp_path, YAML_ROUTE + HANDLERS.replace("campaign:", "campagn:"))) == (
        f"{path}: unknown key 'campagn' (expected one of: version, triggers); did you mean 'campaign'?",
    )
    # without `campaign`, `triggers` is still required
    assert routing_errors(write(tmp_path, "")) == (f"{path}: missing required key: triggers",)


def test_campaign_routes_drive_reconciliation(tmp_path: Path, kit, demo_catalog) -> None:
    """The generated routes are ordinary routes: reconcile matches and queues on them."""
    from devstack.messages import CART_ABANDONMENT_TRIGGER_ID
    from include.triggerflow.stages.reconcile import reconcile_batch
    from include.triggerflow.store.schema import decision, send
    from tests.fixtures import envelope_json

    text = option(triggers_topic({"name": CART_ABANDONMENT_TRIGGER_ID, "jsConnector": "cus:triggers.js"}))
    config = load_routing(write(tmp_path, HANDLERS, text), templates_dir=TEMPLATES_DIR)
    kit.add_profiles({"customer_id": "C1", "email": "ada@example.com", "shopper_id": "SHOP-1"})
    kit.add_batch("b1")
    kit.add_event("b1", envelope_json(shopper_id="SHOP-1"))
    kit.add_event("b1", envelope_json(trigger_id="not-configured", shopper_id="SHOP-1"))

    result = reconcile_batch(kit.engine, "b1", config)

    assert result.counts == {"matched": 1, "ignored": 1}
    assert {r["decision"]: r["route"] for r in kit.rows(decision)} == {"matched": "campaign_5c2c6a3e", "ignored": None}
    [row] = kit.rows(send)
    assert (row["route"], row["recipient"]) == ("campaign_5c2c6a3e", "ada@example.com")
