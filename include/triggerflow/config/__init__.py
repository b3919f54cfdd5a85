"""The routing config: which triggers triggerflow processes, and how (Campaign's ``NmsPipeline_Config``).

Campaign keeps its routing in the ``NmsPipeline_Config`` option, a JSON map of trigger UID (or ``"*"``)
to a JS connector (reference/adobe-triggers.md §3.1). triggerflow keeps the same idea in a YAML file
edited by data engineers, and routes each trigger to an email template plus the rule that finds the
customer profile for the event::

    version: 1
    triggers:
      - name: cart_abandonment
        trigger_id: 5c2c6a3e-2b8f-4d6e-9a51-7f0d3c9b1a01      # or "*" (catch-all)
        template: cart_abandonment                          # folder under include/templates/
        subject: "{{ profile.first_name }}, you left something in your cart"
        identity:
          dimension: eVar01                                 # or `field: mcId`
          profile_column: shopper_id

The file is validated completely at load time: a typo must fail the DAG import or the CLI with a
message that names the file, the entry and the problem, not fail silently at send time. All problems
found are reported together so a data engineer can fix the file in one pass. As in Campaign, a trigger
that is not configured is not an error: :meth:`RoutingConfig.route_for` returns ``None`` and the caller
counts the event as ignored.

**Pasting Campaign's option.** An administrator moving from Campaign can paste the value of their
``NmsPipeline_Config`` option (reference/adobe-triggers.md §3.1) instead of, or beside, the
``triggers`` list, and say what each Campaign JS connector becomes in triggerflow::

    version: 1
    campaign:
      config: nms_pipeline_config.json      # the option value, in a file next to this one, OR
      # config_json: '{"topics": [...]}'    # the option value inline
      handlers:                             # jsConnector -> what triggerflow does instead
        "cus:triggers.js":
          template: cart_abandonment
          subject: "{{ profile.first_name }}, you left something in your cart"
          identity: {dimension: eVar01, profile_column: shopper_id}
    triggers: [...]                         # optional when `campaign` is given

The option is parsed as strict JSON, as Campaign does (Adobe's documented sample has comments and a
trailing comma: both are rejected with the line, the column and how to fix it). Each trigger of the
``triggers`` topic becomes a route named ``campaign_<first 8 characters of the UID>`` (``campaign_all``
for ``"*"``); an ``aliases`` topic is accepted and only shown in the status document. A trigger id routed
both by the YAML list and by the option is an error. :func:`load_campaign_json` parses an option value
on its own.

**Where things are.** One module per concern, all names importable from this package as before:

- :mod:`.model`: the frozen dataclasses the rest of triggerflow reads (RoutingConfig, TriggerRoute,
  IdentityRule, RouteRules, FrequencyCap, QuietHours) and the constants of the file's vocabulary;
- :mod:`.schema`: the file's shape as pydantic models (``extra="forbid"``), giving the unknown-key
  ("did you mean") and missing-key messages;
- :mod:`.sections`: the value checks of a route's sections (identity, subject, rules, content);
- :mod:`.templates`: template folder and subject checks, and the Jinja AST walk for event URLs;
- :mod:`.campaign`: Campaign's ``NmsPipeline_Config`` option (strict JSON) and its model;
- :mod:`.loader`: reading the YAML file, the top level, the routes and the ``campaign`` section.
"""

from __future__ import annotations

from include.triggerflow.config.campaign import (
    CAMPAIGN_ALIASES_TOPIC,
    CAMPAIGN_TRIGGERS_TOPIC,
    CampaignConfig,
    CampaignConfigError,
    CampaignTopic,
    CampaignTrigger,
    load_campaign_json,
)
from include.triggerflow.config.loader import load_routing
from include.triggerflow.config.model import (
    CATCH_ALL,
    DEFAULT_DEDUP_WINDOW_S,
    EVENT_FIELDS,
    MULTIPLE_PROFILE_POLICIES,
    PROFILE_IDENTITY_COLUMNS,
    PROFILE_ORDER_COLUMNS,
    ROUTING_FILE_ENV,
    SUPPORTED_VERSION,
    SUPPRESSION_CHECKS,
    FrequencyCap,
    IdentityRule,
    QuietHours,
    RouteRules,
    RoutingConfig,
    RoutingConfigError,
    TriggerRoute,
    parse_duration,
)
from include.triggerflow.config.templates import TEMPLATE_FILES, event_url_references

__all__ = [
    "CAMPAIGN_ALIASES_TOPIC",
    "CAMPAIGN_TRIGGERS_TOPIC",
    "CATCH_ALL",
    "DEFAULT_DEDUP_WINDOW_S",
    "EVENT_FIELDS",
    "MULTIPLE_PROFILE_POLICIES",
    "PROFILE_IDENTITY_COLUMNS",
    "PROFILE_ORDER_COLUMNS",
    "ROUTING_FILE_ENV",
    "SUPPORTED_VERSION",
    "SUPPRESSION_CHECKS",
    "TEMPLATE_FILES",
    "CampaignConfig",
    "CampaignConfigError",
    "CampaignTopic",
    "CampaignTrigger",
    "FrequencyCap",
    "IdentityRule",
    "QuietHours",
    "RouteRules",
    "RoutingConfig",
    "RoutingConfigError",
    "TriggerRoute",
    "event_url_references",
    "load_campaign_json",
    "load_routing",
    "parse_duration",
]
