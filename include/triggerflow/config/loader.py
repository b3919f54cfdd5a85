"""Reading the routing file: YAML without surprises, the top level, the routes, the ``campaign`` section.

The file is validated completely at load time: a typo must fail the DAG import or the CLI with a
message that names the file, the entry and the problem, not fail silently at send time. All problems
found are reported together (one :class:`~.model.RoutingConfigError` listing each) so a data engineer
can fix the file in one pass. As in Campaign, a trigger that is not configured is not an error:
:meth:`~.model.RoutingConfig.route_for` returns ``None`` and the caller counts the event as ignored.
"""

from __future__ import annotations

import difflib
import os
from pathlib import Path

import yaml

from include.triggerflow import DEFAULT_ROUTING_FILE, TEMPLATES_DIR
from include.triggerflow.config.campaign import (
    CampaignConfig,
    CampaignConfigError,
    campaign_route_name,
    parse_campaign_text,
    read_campaign_file,
)
from include.triggerflow.config.model import (
    CATCH_ALL,
    MULTIPLE_PROFILE_POLICIES,
    ROUTING_FILE_ENV,
    SUPPORTED_VERSION,
    IdentityRule,
    RouteRules,
    RoutingConfig,
    RoutingConfigError,
    TriggerRoute,
)
from include.triggerflow.config.schema import (
    HANDLER_KEYS,
    USUAL_TOP_KEYS,
    CampaignShape,
    HandlerShape,
    RouteShape,
    RoutingFileShape,
    display_path,
    missing_keys,
    shape_problems,
    type_name,
)
from include.triggerflow.config.sections import NAME_RE, RawSection, RouteContent, SectionChecker


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that rejects duplicate mapping keys: PyYAML would silently keep the last one, which
    hides a copy-pasted route or a second ``subject`` line."""


def _construct_mapping(loader: _StrictLoader, node: yaml.MappingNode, deep: bool = False) -> dict[object, object]:
    loader.flatten_mapping(node)
    seen: set[object] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        try:
            duplicate = key in seen
        except TypeError:  # unhashable key: construct_mapping below reports it properly
            continue
        if duplicate:
            raise yaml.constructor.ConstructorError(
                "while constructing a mapping",
                node.start_mark,
                f"found duplicate key {key!r}",
                key_node.start_mark,
            )
        seen.add(key)
    return loader.construct_mapping(node, deep=deep)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)

#: what a Campaign handler becomes once checked: the parts of a route it gives
_Handler = tuple[str, str, IdentityRule, RouteContent]


class _Loader(SectionChecker):
    """Validation state for one file: collects every problem, then raises once."""

    def fatal(self, problem: str) -> RoutingConfigError:
        return RoutingConfigError(f"{self.shown}: {problem}")

    def read(self) -> object:
        if not self.path.exists():
            hint = ""
            if not os.environ.get(ROUTING_FILE_ENV):
                hint = f" (set {ROUTING_FILE_ENV} to use another file)"
            raise self.fatal(f"routing file not found{hint}")
        if not self.path.is_file():
            raise self.fatal("routing file is not a regular file")
        try:
            text = self.path.read_text(encoding="utf-8")
        except UnicodeDecodeError as exc:
            raise self.fatal(f"routing file is not UTF-8 text: {exc}") from exc
        except OSError as exc:
            raise self.fatal(f"cannot read routing file: {exc.strerror or exc}") from exc
        try:
            return yaml.load(text, Loader=_StrictLoader)  # a SafeLoader subclass: no arbitrary objects
        except yaml.MarkedYAMLError as exc:
            mark = exc.problem_mark or exc.context_mark
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            detail = "; ".join(part for part in (exc.context, exc.problem) if part)
            if exc.context == "while scanning an alias":
                detail += ' (a bare * starts a YAML alias: write trigger_id: "*" in quotes for the catch-all)'
            # Duplicate keys are reported by the constructor: valid syntax, invalid document.
            is_syntax = not isinstance(exc, yaml.constructor.ConstructorError)
            label = "YAML syntax error" if is_syntax else "YAML error"
            raise self.fatal(f"{label}{where}: {detail}") from exc
        except yaml.YAMLError as exc:
            raise self.fatal(f"YAML error: {exc}") from exc

    def load(self) -> RoutingConfig:
        data = self.read()
        if not isinstance(data, dict):
            got = "an empty document" if data is None else f"a {type_name(data)}"
            raise self.fatal(f"top level must be a mapping with 'version' and 'triggers', got {got}")

        has_campaign = "campaign" in data
        problems = shape_problems(RoutingFileShape, data, shown=USUAL_TOP_KEYS)
        if not has_campaign and "triggers" not in data:
            # `triggers` is optional in the shape because a `campaign` section may give the routes.
            missing = [key for key in USUAL_TOP_KEYS if key not in data]
            problems = [p for p in problems if not p.startswith("missing required key")] + [missing_keys(missing)]
        for problem in problems:
            self.fail(None, problem)
        if "version" in data:
            version = data["version"]
            if isinstance(version, bool) or version != SUPPORTED_VERSION:
                self.fail(None, f"version must be {SUPPORTED_VERSION}, got {version!r}")

        if "defaults" in data:
            self.load_defaults(data["defaults"])

        routes: list[TriggerRoute] = []
        names: dict[str, str] = {}
        ids: dict[str, str] = {}
        if "triggers" in data:
            triggers = data["triggers"]
            if (triggers is None or triggers == []) and not has_campaign:  # `triggers:` alone is null
                self.fail(None, "'triggers' is empty: configure at least one trigger")
            elif triggers is not None and not isinstance(triggers, list):
                self.fail(None, f"'triggers' must be a list of trigger entries, got {type_name(triggers)}")
            elif triggers:
                routes = self.load_routes(triggers, names, ids)

        campaign: CampaignConfig | None = None
        if has_campaign:
            campaign, campaign_routes = self.load_campaign(data["campaign"], names, ids)
            routes.extend(campaign_routes)

        if self.problems:
            raise RoutingConfigError(self.problems)
        return RoutingConfig(path=self.path, routes=tuple(routes), campaign=campaign)

    def load_routes(self, triggers: list[object], names: dict[str, str], ids: dict[str, str]) -> list[TriggerRoute]:
        """The ``triggers`` list. ``names`` and ``ids`` record where each route name and trigger id
        is first used, so a repeat names the entry it repeats."""
        routes: list[TriggerRoute] = []
        for index, entry in enumerate(triggers):
            where = f"triggers[{index}]"
            if not isinstance(entry, dict):
                self.fail(where, f"entry must be a mapping, got {type_name(entry)}")
                continue
            name = entry.get("name")
            route = self.load_route(f"{where} ({name})" if isinstance(name, str) and name else where, entry, names, ids)
            if route is not None:
                routes.append(route)
        return routes

    def load_route(self, where: str, entry: RawSection, names: dict[str, str], ids: dict[str, str]) -> TriggerRoute | None:
        """One entry of the ``triggers`` list, or None when it has a problem (each one recorded)."""
        before = len(self.problems)
        for problem in shape_problems(RouteShape, entry):
            self.fail(where, problem)

        name = entry.get("name")
        if "name" in entry:
            if not isinstance(name, str) or not NAME_RE.fullmatch(name):
                self.fail(where, f"name {name!r} must match [a-z0-9_]+ (lower-case letters, digits, '_')")
            elif name in names:
                self.fail(where, f"name {name!r} is already used by {names[name]}")
            else:
                names[name] = where

        trigger_id = entry.get("trigger_id")
        if "trigger_id" in entry:
            if not isinstance(trigger_id, str) or not trigger_id.strip():
                self.fail(
                    where,
                    f"trigger_id must be a non-empty string (the triggerType UID, or \"*\"), got {trigger_id!r}",
                )
            else:
                trigger_id = trigger_id.strip()
                if trigger_id in ids:
                    what = "catch-all '*'" if trigger_id == CATCH_ALL else f"trigger_id {trigger_id!r}"
                    self.fail(where, f"{what} is already routed by {ids[trigger_id]}")
                else:
                    ids[trigger_id] = where

        template = entry.get("template")
        if "template" in entry:
            self.check_template(where, template)
        subject, subjects = self.load_subjects(where, entry["subject"]) if "subject" in entry else (None, ())
        identities = self.load_identities(where, entry["identity"]) if "identity" in entry else None
        policy = entry.get("multiple_profiles", "first")
        if policy not in MULTIPLE_PROFILE_POLICIES:
            self.fail(where, f"multiple_profiles {policy!r} is not one of: {', '.join(MULTIPLE_PROFILE_POLICIES)}")
        order = self.load_profile_order(where, entry.get("profile_order", "customer_id"))
        rules = self.load_rules(f"{where}: rules", entry.get("rules") if "rules" in entry else {})
        content = self.load_content(where, entry) if len(self.problems) == before else None

        if len(self.problems) != before or content is None:
            return None
        # No problem found: every value below was checked (the isinstance tests are for mypy).
        if not (
            isinstance(name, str) and isinstance(trigger_id, str) and isinstance(template, str)
            and isinstance(policy, str) and identities and subject is not None and order and rules
        ):
            return None
        return TriggerRoute(
            name=name,
            trigger_id=trigger_id,
            template=template,
            subject=subject,
            identities=identities,
            subjects=subjects,
            multiple_profiles=policy,
            profile_order=order,
            rules=rules,
            products=content.products,
            link_policy=content.link_policy,
            links=content.links,
        )

    def load_campaign(
        self, section: object, names: dict[str, str], ids: dict[str, str]
    ) -> tuple[CampaignConfig | None, list[TriggerRoute]]:
        """The ``campaign`` section: the pasted option plus a handler per jsConnector, as routes."""
        where = "campaign"
        if not isinstance(section, dict):
            self.fail(
                where,
                "must be a mapping with 'config' (a file) or 'config_json' (inline) and 'handlers', "
                f"got {type_name(section)}",
            )
            return None, []
        for problem in shape_problems(CampaignShape, section):
            self.fail(where, problem)

        handlers = self.load_handlers(section.get("handlers")) if "handlers" in section else None
        config = self.load_campaign_option(section)
        if config is None or handlers is None:
            return config, []

        routes: list[TriggerRoute] = []
        taken = set(names)
        for trigger in config.triggers:
            at = f"{config.origin}: {trigger.path}"
            if trigger.js_connector not in handlers:
                known = list(handlers)
                defined = ", ".join(repr(key) for key in known) if known else "none"
                message = (
                    f"{at}: jsConnector {trigger.js_connector!r} has no handler in {self.shown}: "
                    f"campaign.handlers (defined: {defined})"
                )
                close = difflib.get_close_matches(trigger.js_connector, known, n=1)
                if close:
                    message += f"; did you mean {close[0]!r}?"
                self.problems.append(message)
                continue
            handler = handlers[trigger.js_connector]
            if handler is None:  # the handler itself is invalid: already reported
                continue
            if trigger.name in ids:
                what = "catch-all '*'" if trigger.name == CATCH_ALL else f"trigger_id {trigger.name!r}"
                self.problems.append(f"{at}: {what} is routed both here and by {self.shown}: {ids[trigger.name]}; keep one")
                continue
            ids[trigger.name] = at
            name = campaign_route_name(trigger.name, taken)
            taken.add(name)
            names[name] = at
            template, subject, identity, content = handler
            rules = self.load_rules(f"{at}: rules (defaults)", {}) or RouteRules()
            routes.append(
                TriggerRoute(
                    name=name,
                    trigger_id=trigger.name,
                    template=template,
                    subject=subject,
                    identities=(identity,),
                    handler=trigger.js_connector,
                    rules=rules,
                    products=content.products,
                    link_policy=content.link_policy,
                    links=content.links,
                )
            )
        return config, routes

    def load_campaign_option(self, section: RawSection) -> CampaignConfig | None:
        where = "campaign"
        if "config" in section and "config_json" in section:
            self.fail(where, "has both 'config' and 'config_json': give exactly one")
            return None
        if "config" in section:
            value = section["config"]
            if not isinstance(value, str) or not value.strip():
                self.fail(f"{where}.config", f"must be the path of the file holding the NmsPipeline_Config value, got {value!r}")
                return None
            path = Path(value.strip())
            if not path.is_absolute():
                path = self.path.parent / path  # relative to the routing file, not the cwd
            try:
                text = read_campaign_file(path)
            except CampaignConfigError as exc:
                self.fail(f"{where}.config", str(exc))
                return None
            origin = display_path(path)
        elif "config_json" in section:
            raw = section["config_json"]
            if raw is not None and not isinstance(raw, str):
                self.fail(
                    f"{where}.config_json",
                    f"must be the option value as a string (quote it, or use a '|' block), got {type_name(raw)}",
                )
                return None
            text = raw or ""
            origin = f"{self.shown}: {where}.config_json"
        else:
            self.fail(where, "needs 'config' (a file holding the NmsPipeline_Config value) or 'config_json' (the value inline)")
            return None
        config, problems = parse_campaign_text(text, origin)
        self.problems.extend(problems)
        return config

    def load_handlers(self, handlers: object) -> dict[str, _Handler | None] | None:
        """jsConnector -> (template, subject, identity, content), or None for a handler with
        problems. A handler takes the routes' optional content keys too (products, link_hosts,
        allow_http, links)."""
        where = "campaign.handlers"
        if not isinstance(handlers, dict) or not handlers:
            got = "an empty mapping" if handlers == {} else type_name(handlers)
            self.fail(
                where,
                "must map each Campaign jsConnector (e.g. \"cus:triggers.js\") to "
                f"template, subject and identity, got {got}",
            )
            return None
        loaded: dict[str, _Handler | None] = {}
        for connector, spec in handlers.items():
            at = f"{where}[{connector!r}]"
            if not isinstance(connector, str):
                self.fail(at, f"the jsConnector must be a string, got {type_name(connector)}")
                continue
            if not isinstance(spec, dict):
                self.fail(at, f"must be a mapping with {', '.join(HANDLER_KEYS)}, got {type_name(spec)}")
                loaded[connector] = None
                continue
            before = len(self.problems)
            for problem in shape_problems(HandlerShape, spec):
                self.fail(at, problem)
            template, subject = spec.get("template"), spec.get("subject")
            if "template" in spec:
                self.check_template(at, template)
            if "subject" in spec:
                self.check_subject(at, subject)
            identity = self.load_identity(at, spec["identity"]) if "identity" in spec else None
            content = self.load_content(at, spec) if len(self.problems) == before else None
            ok = len(self.problems) == before and identity is not None and content is not None
            if ok and isinstance(template, str) and isinstance(subject, str) and identity and content:
                loaded[connector] = (template, subject, identity, content)
            else:
                loaded[connector] = None
        return loaded


def load_routing(path: str | os.PathLike[str] | None = None, *, templates_dir: Path = TEMPLATES_DIR) -> RoutingConfig:
    """Load and validate the routing file.

    :param path: the YAML file; default ``$TRIGGERFLOW_ROUTING_FILE``, else ``include/routing.yaml``.
    :param templates_dir: where template folders are looked up.
    :raises RoutingConfigError: the file is missing or invalid; the message lists every problem.
    """
    if path is None:
        path = os.environ.get(ROUTING_FILE_ENV) or DEFAULT_ROUTING_FILE
    return _Loader(Path(path), Path(templates_dir)).load()
