"""CLI commands ``preview`` and ``test-send``: a route's email rendered for an event and a profile,
written to files or sent to seed addresses (never through the send ledger)."""

from __future__ import annotations

import argparse
import json
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from sqlalchemy import select

from include.triggerflow.cli.common import CliError, error, store_engine
from include.triggerflow.store.engines import describe

if TYPE_CHECKING:
    from include.triggerflow.config import RoutingConfig


def _read_json_file(path: str, what: str) -> object:
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except OSError as exc:
        raise CliError(f"cannot read the {what} file {path}: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise CliError(f"the {what} file {path} is not valid JSON: {exc}") from None


def _preview_inputs(args: argparse.Namespace) -> tuple[RoutingConfig, dict, Mapping[str, Any] | str | bytes, dict | None]:
    """(routing, profile, event payload, catalogue) for preview/test-send, from files, the store or
    the shipped samples. With ``--customer-id`` the event's products come from the store's
    catalogue, as the send stage would show them; otherwise (None) from the sample catalogue."""
    from include.triggerflow.config import RoutingConfigError, load_routing
    from include.triggerflow.preview import (
        PreviewError,
        find_route,
        sample_event,
        sample_profile,
    )

    try:
        routing = load_routing()
    except RoutingConfigError as exc:
        raise CliError(f"routing config: {exc}") from None
    try:
        route = find_route(routing, args.route)
    except PreviewError as exc:
        raise CliError(str(exc)) from None
    loaded = _read_json_file(args.event, "event") if args.event else sample_event(route)
    if not isinstance(loaded, dict):
        raise CliError(f"the event file {args.event} must hold a JSON object (an envelope, producer message or trigger body)")
    event: Mapping[str, Any] = loaded
    catalog = None
    if args.profile:
        profile = _read_json_file(args.profile, "profile")
        if not isinstance(profile, dict):
            raise CliError(f"the profile file {args.profile} must hold a JSON object of profile columns")
    elif args.customer_id:
        from include.triggerflow.catalog import lookup
        from include.triggerflow.content import event_skus
        from include.triggerflow.preview import parse_event
        from include.triggerflow.store.schema import profiles

        try:
            skus = event_skus(parse_event(event))
        except PreviewError as exc:
            raise CliError(str(exc)) from None
        engine = store_engine(args)
        with engine.connect() as conn:
            row = conn.execute(select(profiles).where(profiles.c.customer_id == args.customer_id)).first()
            catalog = dict(lookup(conn, skus))
        if row is None:
            raise CliError(f"no profile with customer_id {args.customer_id!r} in the store at {describe(engine)}")
        profile = dict(row._mapping)
    else:
        profile = sample_profile(args.locale)
    if args.locale:
        profile = {**profile, "locale": args.locale}
    return routing, profile, event, catalog


def cmd_preview(args: argparse.Namespace) -> int:
    from pathlib import Path

    from include.triggerflow.preview import PreviewError, render_preview

    try:
        routing, profile, event, catalog = _preview_inputs(args)
        paths = render_preview(
            args.route, event, profile, routing=routing, unsubscribe_url=args.unsubscribe_url, out_dir=Path(args.out),
            catalog=catalog,
        )
    except (CliError, PreviewError) as exc:
        return error(exc)
    subject = paths["subject.txt"].read_text(encoding="utf-8").strip()
    print(f"subject: {subject}")
    for path in paths.values():
        print(f"wrote {path}")
    return 0


def cmd_test_send(args: argparse.Namespace) -> int:
    """Send through :class:`~include.triggerflow.hooks.smtp.TriggerMailHook`: the connection
    (``--smtp-conn``) with ``--smtp-host/--smtp-port/--from`` as overrides; the hook's errors name
    what is missing and which flag supplies it."""
    from include.triggerflow.hooks.smtp import TriggerMailHook
    from include.triggerflow.preview import PreviewError, send_test

    try:
        routing, profile, event, catalog = _preview_inputs(args)
        mail = TriggerMailHook(args.smtp_conn, host=args.smtp_host, port=args.smtp_port, from_email=args.sender)
        results = send_test(
            args.route,
            event,
            profile,
            args.to,
            mail=mail,
            routing=routing,
            catalog=catalog,
            unsubscribe_url=args.unsubscribe_url,
            subject_prefix=args.subject_prefix,
        )
    except (CliError, PreviewError) as exc:
        return error(exc)
    for result in results:
        state = "accepted" if result.accepted else f"refused {result.code}: {result.reply}"
        print(f"{result.recipient}\t{state}\t{result.message_id}")
    return 0 if all(result.accepted for result in results) else 1


def _add_preview_arguments(p: argparse.ArgumentParser) -> None:
    from include.triggerflow.preview import DEFAULT_UNSUBSCRIBE_URL

    p.add_argument("--route", required=True, help="route name from the routing config (e.g. cart_abandonment)")
    p.add_argument("--event", help="event JSON (envelope, producer message or trigger body); default: the route's sample")
    who = p.add_mutually_exclusive_group()
    who.add_argument("--profile", help="profile JSON (profile columns); default: include/templates/samples/profile.json")
    who.add_argument(
        "--customer-id",
        help="read the profile from the store (profiles.customer_id), and the event's products from the store's catalogue",
    )
    p.add_argument("--locale", help="override the profile's locale (e.g. fr, fr_CA) to preview a variant")
    p.add_argument(
        "--unsubscribe-url",
        default=DEFAULT_UNSUBSCRIBE_URL,
        help="unsubscribe link to put in the footer and List-Unsubscribe (default: a placeholder that unsubscribes nobody)",
    )


def register(sub: argparse._SubParsersAction) -> None:
    """Add this module's commands to the parser."""
    p = sub.add_parser("preview", help="render a route's email for an event and a profile to files")
    _add_preview_arguments(p)
    p.add_argument("--out", required=True, help="folder to write subject.txt, email.html, email.txt, message.eml")
    p.set_defaults(func=cmd_preview)
    p = sub.add_parser("test-send", help="send a route's email to seed addresses (no ledger)")
    _add_preview_arguments(p)
    p.add_argument("--to", action="append", required=True, metavar="ADDR", help="seed address (repeat for several)")
    p.add_argument("--smtp-conn", default="smtp_triggers", help="Airflow connection for host/port/from (default smtp_triggers)")
    p.add_argument("--smtp-host", help="override the connection's host")
    p.add_argument("--smtp-port", type=int, help="override the connection's port")
    p.add_argument("--from", dest="sender", help="override the connection's from_email")
    p.add_argument("--subject-prefix", default="[TEST] ", help='prefix of the subject (default "[TEST] ")')
    p.set_defaults(func=cmd_test_send)
