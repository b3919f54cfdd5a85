"""The value checks of a route's sections: identity, subject, profile order, rules, content.

Each ``load_*`` method checks one section of a route (or of a Campaign handler), records every
problem it finds with where it is (``triggers[1] (browse): identity: ...``) and returns the typed
value of :mod:`.model`, or None when the section has a problem. Nothing raises: the loader gathers
all the problems of a file and reports them together, so a data engineer fixes the file in one pass.
Which keys a section takes is pydantic's job (:mod:`.schema`); the checks here are about values.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import time
from pathlib import Path
from typing import Literal

from include.triggerflow.config.model import (
    EVENT_FIELDS,
    PROFILE_IDENTITY_COLUMNS,
    PROFILE_ORDER_COLUMNS,
    SUPPRESSION_CHECKS,
    FrequencyCap,
    IdentityRule,
    QuietHours,
    RouteRules,
    parse_duration,
)
from include.triggerflow.config.schema import (
    DefaultsShape,
    FrequencyCapShape,
    IdentityShape,
    QuietHoursShape,
    RulesShape,
    display_path,
    field_names,
    shape_problems,
    type_name,
)
from include.triggerflow.config.templates import event_url_references, subject_problem, template_problem
from include.triggerflow.content import ProductSource
from include.triggerflow.links import NO_LINKS, LinkPolicy, parse_host_pattern
from include.triggerflow.locales import find_zone, is_locale_tag
from include.triggerflow.states import Suppression

_CLOCK_RE = re.compile(r"([01]?\d|2[0-3]):([0-5]\d)")
NAME_RE = re.compile(r"[a-z0-9_]+")

#: a mapping read from the YAML file, before its values are checked
RawSection = Mapping[object, object]


@dataclass(frozen=True)
class RouteContent:
    """A route's or handler's content keys, checked: what its emails may show of an event."""

    products: ProductSource = ProductSource.CATALOG
    link_policy: LinkPolicy = NO_LINKS
    links: tuple[tuple[str, str], ...] = ()


@dataclass
class SectionChecker:
    """Problems found so far in one file, and the checks that add to them."""

    path: Path
    templates_dir: Path
    problems: list[str] = field(default_factory=list)
    #: the file's ``defaults.rules``, merged under every route's own ``rules``
    default_rules: dict[object, object] = field(default_factory=dict)
    #: the file as messages name it (``include/routing.yaml``, absolute when outside the project)
    shown: str = field(init=False)

    def __post_init__(self) -> None:
        self.shown = display_path(self.path)

    def fail(self, where: str | None, problem: str) -> None:
        self.problems.append(f"{self.shown}: {where}: {problem}" if where else f"{self.shown}: {problem}")

    def check_template(self, where: str, template: object) -> None:
        problem = template_problem(self.templates_dir, template)
        if problem is not None:
            self.fail(where, problem)

    def check_subject(self, where: str, subject: object) -> None:
        problem = subject_problem(subject)
        if problem is not None:
            self.fail(where, problem)

    def load_subjects(self, where: str, value: object) -> tuple[str | None, tuple[tuple[str, str], ...]]:
        """``subject`` is one template, or a mapping of locale tag -> template with a ``default``."""
        if not isinstance(value, dict):
            before = len(self.problems)
            self.check_subject(where, value)
            return (value if isinstance(value, str) and len(self.problems) == before else None), ()
        if "default" not in value:
            self.fail(where, "subject: a per-locale mapping needs a 'default' entry (used when no locale matches)")
        variants: list[tuple[str, str]] = []
        default: str | None = None
        before = len(self.problems)
        for tag, text in value.items():
            at = f"{where}: subject[{tag!r}]"
            if tag != "default" and not is_locale_tag(tag):
                self.fail(at, "locale must be a tag such as fr, fr-CA or pt-BR")
                continue
            self.check_subject(at, text)
            if not isinstance(text, str):
                continue  # reported just above
            if tag == "default":
                default = text
            else:
                variants.append((tag, text))
        if len(self.problems) != before:
            return None, ()
        return default, tuple(variants)

    def load_identities(self, where: str, value: object) -> tuple[IdentityRule, ...] | None:
        """One identity rule, or a list of them tried in order (the first that finds a profile wins)."""
        if isinstance(value, list):
            if not value:
                self.fail(f"{where}: identity", "the list is empty: give at least one rule")
                return None
            loaded = [self.load_identity(f"{where}: identity[{i}]", item, nested=True) for i, item in enumerate(value)]
            rules = [rule for rule in loaded if rule is not None]
            if len(rules) != len(loaded):
                return None
            seen: set[IdentityRule] = set()
            for i, rule in enumerate(rules):
                if rule in seen:
                    self.fail(f"{where}: identity[{i}]", "repeats an earlier rule of the list")
                seen.add(rule)
            return tuple(rules)
        single = self.load_identity(where, value)
        return (single,) if single is not None else None

    def load_identity(self, where: str, identity: object, *, nested: bool = False) -> IdentityRule | None:
        where = where if nested else f"{where}: identity"
        if not isinstance(identity, dict):
            self.fail(
                where,
                "must be a mapping with 'dimension' or 'field' and 'profile_column', "
                f"got {type_name(identity)}",
            )
            return None
        before = len(self.problems)
        for problem in shape_problems(IdentityShape, identity):
            self.fail(where, problem)

        kind: Literal["dimension", "field"] | None = None
        key: str | None = None
        if "dimension" in identity and "field" in identity:
            self.fail(where, "has both 'dimension' and 'field': give exactly one")
        elif "dimension" in identity:
            value = identity["dimension"]
            if not isinstance(value, str) or not value.strip():
                self.fail(where, f"dimension must be a non-empty dimension name such as eVar01, got {value!r}")
            else:
                kind, key = "dimension", value.strip()
        elif "field" in identity:
            value = identity["field"]
            if not isinstance(value, str) or value not in EVENT_FIELDS:
                self.fail(where, f"field {value!r} is not one of: {', '.join(EVENT_FIELDS)}")
            else:
                kind, key = "field", value
        else:
            self.fail(where, "needs exactly one of 'dimension' (e.g. eVar01) or 'field' (e.g. mcId)")

        column = identity.get("profile_column")
        if "profile_column" in identity and column not in PROFILE_IDENTITY_COLUMNS:
            self.fail(where, f"profile_column {column!r} is not one of: {', '.join(PROFILE_IDENTITY_COLUMNS)}")

        if len(self.problems) != before or kind is None or key is None or not isinstance(column, str):
            return None
        return IdentityRule(kind=kind, key=key, profile_column=column)

    def load_profile_order(self, where: str, value: object) -> tuple[str, bool] | None:
        parts = value.split() if isinstance(value, str) else []
        if (
            not parts
            or len(parts) > 2
            or parts[0] not in PROFILE_ORDER_COLUMNS
            or (len(parts) == 2 and parts[1].lower() not in ("asc", "desc"))
        ):
            self.fail(
                where,
                f"profile_order {value!r} must be a profiles column ({', '.join(PROFILE_ORDER_COLUMNS)}) "
                "optionally followed by asc or desc, e.g. 'updated_at desc'",
            )
            return None
        return parts[0], len(parts) == 2 and parts[1].lower() == "desc"

    def load_defaults(self, value: object) -> None:
        where = "defaults"
        if not isinstance(value, dict):
            self.fail(where, f"must be a mapping with 'rules', got {type_name(value)}")
            return
        for problem in shape_problems(DefaultsShape, value):
            self.fail(where, problem)
        rules = value.get("rules", {})
        if self.load_rules("defaults: rules", rules, merge_defaults=False) is not None and isinstance(rules, dict):
            self.default_rules = dict(rules)

    def load_rules(self, where: str, value: object, *, merge_defaults: bool = True) -> RouteRules | None:
        """A route's ``rules`` mapping over the file's ``defaults.rules`` (the route wins per key)."""
        if value is None:
            value = {}
        if not isinstance(value, dict):
            self.fail(where, f"must be a mapping of rules ({', '.join(field_names(RulesShape))}), got {type_name(value)}")
            return None
        before = len(self.problems)
        for problem in shape_problems(RulesShape, value):
            self.fail(where, problem)
        merged: dict[object, object] = {**(self.default_rules if merge_defaults else {}), **value}
        defaults = RouteRules()
        suppress = defaults.suppress
        durations = {"dedup_window": defaults.dedup_window_s, "validity": defaults.validity_s}
        frequency_cap: FrequencyCap | None = None
        quiet_hours: QuietHours | None = None

        if "suppress" in merged:
            checks = merged["suppress"]
            if not isinstance(checks, list) or any(c not in SUPPRESSION_CHECKS for c in checks):
                self.fail(
                    where,
                    f"suppress must be a list of: {', '.join(SUPPRESSION_CHECKS)} ([] turns suppression off), got {checks!r}",
                )
            else:
                suppress = frozenset(Suppression(check) for check in checks)
        for key in durations:
            if key in merged:
                raw = merged[key]
                if raw is None or raw == 0 or raw == "0":
                    durations[key] = None
                    continue
                try:
                    durations[key] = parse_duration(raw)
                except ValueError as exc:
                    self.fail(where, f"{key}: {exc}")
        if merged.get("frequency_cap") is not None:
            frequency_cap = self.load_frequency_cap(where, merged["frequency_cap"])
        if merged.get("quiet_hours") is not None:
            quiet_hours = self.load_quiet_hours(where, merged["quiet_hours"])
        if len(self.problems) != before:
            return None
        return RouteRules(
            suppress=suppress,
            dedup_window_s=durations["dedup_window"],
            validity_s=durations["validity"],
            frequency_cap=frequency_cap,
            quiet_hours=quiet_hours,
        )

    def load_frequency_cap(self, where: str, cap: object) -> FrequencyCap | None:
        if not isinstance(cap, dict):
            self.fail(where, f"frequency_cap must be a mapping like {{max: 3, per: 24h}}, got {type_name(cap)}")
            return None
        where = f"{where}: frequency_cap"
        for problem in shape_problems(FrequencyCapShape, cap):
            self.fail(where, problem)
        count = cap.get("max")
        if "max" in cap and (isinstance(count, bool) or not isinstance(count, int) or count < 1):
            self.fail(where, f"max must be a whole number >= 1, got {count!r}")
        per = None
        if "per" in cap:
            try:
                per = parse_duration(cap["per"])
                if per == 0:
                    raise ValueError("the period is zero")
            except ValueError as exc:
                self.fail(where, f"per: {exc}")
                per = None
        if per is not None and isinstance(count, int) and not isinstance(count, bool) and count >= 1:
            return FrequencyCap(max=count, per_s=per)
        return None

    def load_quiet_hours(self, where: str, quiet: object) -> QuietHours | None:
        if not isinstance(quiet, dict):
            self.fail(where, f"quiet_hours must be a mapping like {{start: '21:00', end: '08:00'}}, got {type_name(quiet)}")
            return None
        where = f"{where}: quiet_hours"
        for problem in shape_problems(QuietHoursShape, quiet):
            self.fail(where, problem)
        clocks: dict[str, time] = {}
        for key in ("start", "end"):
            raw = quiet.get(key)
            match = _CLOCK_RE.fullmatch(raw) if isinstance(raw, str) else None
            if key in quiet and match is None:
                self.fail(where, f"{key} must be a quoted 24-hour time such as '21:00', got {raw!r}")
            elif match:
                clocks[key] = time(int(match.group(1)), int(match.group(2)))
        tz_name = quiet.get("default_timezone", "UTC")
        # No zone means no conversion to do: an unknown default zone is a problem of the file.
        known_zone = find_zone(tz_name) is not None
        if not known_zone:
            self.fail(where, f"default_timezone {tz_name!r} is not an IANA time zone such as Europe/Paris")
        if len(clocks) == 2 and clocks["start"] == clocks["end"]:
            self.fail(where, "start and end are equal: the window would be empty")
        elif len(clocks) == 2 and known_zone and isinstance(tz_name, str):
            return QuietHours(start=clocks["start"], end=clocks["end"], default_timezone=tz_name)
        return None

    def load_content(self, where: str, spec: RawSection) -> RouteContent | None:
        """The content keys of a route or handler (``products``, ``link_hosts``, ``allow_http``,
        ``links``), or None when one is wrong.

        Called once the template is known to be valid. A route whose templates render event URLs
        (they reference ``event.pages``, ``event.products``, ``event.dimensions`` or the whole
        ``event``) must say which hosts its emails may link to: without ``link_hosts`` it fails
        here, naming the templates and references found."""
        before = len(self.problems)
        products = spec.get("products", ProductSource.CATALOG.value)
        if not isinstance(products, str) or products not in tuple(ProductSource):
            self.fail(
                where,
                f"products {products!r} must be one of: catalog (names, prices, URLs and images from the "
                f"catalogue by SKU; the default) or event (from the event itself, names cut at 80 characters)",
            )
        allow_http = spec.get("allow_http", False)
        if not isinstance(allow_http, bool):
            self.fail(where, f"allow_http must be true or false, got {allow_http!r}")
            allow_http = False
        policy: LinkPolicy | None = None
        if "link_hosts" in spec:
            hosts = spec["link_hosts"]
            if not isinstance(hosts, list):
                self.fail(
                    where,
                    "link_hosts must be a list of hosts such as [shop.example.com, '*.cdn.example.com'], "
                    f"got {type_name(hosts)}",
                )
            else:
                patterns = []
                for index, host in enumerate(hosts):
                    try:
                        patterns.append(parse_host_pattern(host))
                    except ValueError as exc:
                        self.fail(f"{where}: link_hosts[{index}]", str(exc))
                policy = LinkPolicy(hosts=tuple(dict.fromkeys(patterns)), allow_http=allow_http)
        links = self.load_links(where, spec, policy)
        template = spec.get("template")
        if "link_hosts" not in spec and len(self.problems) == before and isinstance(template, str):
            found = event_url_references(self.templates_dir, template)
            if found:
                shown = "; ".join(found[:6]) + ("; ..." if len(found) > 6 else "")
                self.fail(
                    where,
                    f"template {template!r} renders URLs taken from the event ({shown}) but the route has no "
                    "link_hosts: event data is unauthenticated, so every page, product and image URL must be "
                    "on an allowed host. Add link_hosts: [your.shop.host] (exact hosts or '*.domain'), "
                    "or link_hosts: [] to show none of them",
                )
        if len(self.problems) != before:
            return None
        return RouteContent(
            products=ProductSource(str(products)),
            link_policy=policy if policy is not None else LinkPolicy(allow_http=allow_http),
            links=links,
        )

    def load_links(self, where: str, spec: RawSection, policy: LinkPolicy | None) -> tuple[tuple[str, str], ...]:
        """``links``: name -> URL of the buttons a route's templates show; each URL must pass the
        route's own ``link_hosts`` (``policy``; None when link_hosts is itself wrong)."""
        if "links" not in spec:
            return ()
        raw = spec["links"]
        if not isinstance(raw, dict):
            self.fail(where, f"links must be a mapping of name -> URL such as {{cart: 'https://shop.example.com/cart'}}, got {type_name(raw)}")
            return ()
        if "link_hosts" not in spec:
            self.fail(
                where,
                "links need link_hosts: list the hosts of these URLs (link_hosts: [shop.example.com]); "
                "every URL of an email must be on one of the route's link_hosts",
            )
            return ()
        links: list[tuple[str, str]] = []
        for name, url in raw.items():
            at = f"{where}: links[{name!r}]"
            if not isinstance(name, str) or not NAME_RE.fullmatch(name):
                self.fail(at, "a link name must match [a-z0-9_]+ (templates use it as links.<name>)")
                continue
            if policy is None:
                continue  # link_hosts itself is wrong: reported above
            verdict = policy.check(url)
            if verdict.url is None:
                self.fail(
                    at,
                    f"{url!r} is refused by the route's link_hosts ({policy.describe()}): {verdict.refusal}; "
                    "give an absolute URL on one of those hosts",
                )
            else:
                links.append((name, verdict.url))
        return tuple(links)
