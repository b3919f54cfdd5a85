"""deploy/secrets/connections.example.json and variables.example.json, read the way a deployment
reads them: through Airflow's LocalFilesystemBackend (the same JSON shapes go into AWS Secrets
Manager, Vault or AIRFLOW_CONN_* variables), then handed to the project's own hooks and validators,
which refuse what production would refuse. Placeholders stay placeholders: no network, no server.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from airflow.sdk import BaseHook, Variable
from airflow.secrets.local_filesystem import LocalFilesystemBackend
from sqlalchemy.engine import make_url

from include.triggerflow.addresses import validate_address
from include.triggerflow.adobe.extras import ImsExtras
from include.triggerflow.hooks.smtp import TriggerMailHook
from include.triggerflow.hooks.store import TriggersStoreHook
from include.triggerflow.hooks.triggers import TriggerSourceHook
from include.triggerflow.hooks.unsubscribe import UnsubscribeHook, links_from_connection
from include.triggerflow.maintenance.metadata_clean import BLOCKED_URL_MARK, metadata_env
from tests.unit.deploy.deploy_checks import SECRETS_DIR, is_placeholder

CONNECTIONS = SECRETS_DIR / "connections.example.json"
VARIABLES = SECRETS_DIR / "variables.example.json"


def _backend(connections: Path = CONNECTIONS) -> LocalFilesystemBackend:
    return LocalFilesystemBackend(connections_file_path=str(connections), variables_file_path=str(VARIABLES))


def _serve(monkeypatch: pytest.MonkeyPatch, backend: LocalFilesystemBackend) -> None:
    """Hooks look connections up through the file backend, as they would through the
    deployment's backend (the hooks call BaseHook.get_connection)."""
    from airflow.sdk.exceptions import AirflowNotFoundException

    def get_connection(cls: type, conn_id: str) -> Any:
        conn = backend.get_connection(conn_id)
        if conn is None:
            raise AirflowNotFoundException(f"The conn_id `{conn_id}` isn't defined")
        return conn

    monkeypatch.setattr(BaseHook, "get_connection", classmethod(get_connection))


@pytest.fixture
def served(monkeypatch: pytest.MonkeyPatch) -> Iterator[LocalFilesystemBackend]:
    backend = _backend()
    _serve(monkeypatch, backend)
    yield backend


def _examples() -> dict[str, dict[str, Any]]:
    data = json.loads(CONNECTIONS.read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


def test_every_example_loads_through_the_local_filesystem_backend() -> None:
    backend = _backend()
    for conn_id, shape in _examples().items():
        conn = backend.get_connection(conn_id)
        assert conn is not None and conn.conn_id == conn_id and conn.conn_type == shape["conn_type"], conn_id
        assert isinstance(conn.extra_dejson, dict), conn_id
        assert conn.description, f"{conn_id}: say what it is for"
        # an example never carries a real secret: a password is a <placeholder> or absent
        assert conn.password is None or is_placeholder(conn.password), conn_id


def test_the_adobe_connections_pass_the_hooks_validation(served: LocalFilesystemBackend) -> None:
    hook = TriggerSourceHook()
    source = hook.get_source()  # validates adobe_triggers (pydantic extras, host) and reads adobe_ims
    assert type(source).__name__ == "JournalSource"
    ims = hook.ims_hook
    assert ims is not None and ims.adobe_ims_conn_id == "adobe_ims"
    assert isinstance(ims.extras, ImsExtras) and ims.auth_type == "oauth"
    assert ims.base_url.startswith("https://") and ims.org_id.endswith("@AdobeOrg")
    assert ims.client_id == "<client-id>" and ims.client_secret == "<client-secret>"
    assert "openid" in ims.extras.scopes


def test_the_store_and_metadata_connections_give_postgres_urls(served: LocalFilesystemBackend) -> None:
    store = make_url(TriggersStoreHook().get_url())
    assert store.get_backend_name() == "postgresql" and store.database == "triggerflow"
    assert store.query.get("sslmode") == "require"
    # trigger_maintenance in a task process, where Airflow 3 hides its own database URL
    env = metadata_env({"AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"{BLOCKED_URL_MARK}:///"}, lookup=served.get_connection)
    metadata = make_url(env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"])
    assert metadata.get_backend_name() == "postgresql" and metadata.port == 5432
    # direct to the database: PgBouncer's transaction pooling is no place for db clean's batches
    assert "pgbouncer" not in str(metadata.host)


def test_the_unsubscribe_connection_signs_links_the_api_server_verifies(served: LocalFilesystemBackend) -> None:
    hook = UnsubscribeHook()
    links = hook.get_links()  # the signing side refuses http:// for a public host (RFC 8058)
    url = links.url_for("C0001", "cart_abandonment")
    parts = urlsplit(url)
    assert parts.scheme == "https" and parts.path == "/triggerflow/unsubscribe/"
    token = parse_qs(parts.query)["token"][0]
    # the API server builds its verifier from the same connection (plugins/unsubscribe.py)
    verifier = links_from_connection(served.get_connection("triggerflow_unsubscribe"))
    assert verifier.verify(token).customer_id == "C0001"
    assert hook.mailto == "unsubscribe@example.com"


@pytest.mark.parametrize("conn_id", ["smtp_triggers", "smtp_alerts"])
def test_the_smtp_connections_give_a_starttls_session_with_a_sender(served: LocalFilesystemBackend, conn_id: str) -> None:
    hook = TriggerMailHook(conn_id)
    assert validate_address(hook.sender) == hook.sender
    assert hook.port == 587 and hook.use_ssl is False and hook.smtp_starttls is True
    assert hook.smtp_user and hook.smtp_password  # a relay that authenticates


def test_the_alert_webhook_is_an_https_url() -> None:
    conn = _backend().get_connection("triggerflow_alert_webhook")
    assert conn is not None and urlsplit(conn.host).scheme == "https"


def test_the_alert_variable_gives_recipients(monkeypatch: pytest.MonkeyPatch) -> None:
    from include.triggerflow.alerts.channels import alert_recipients

    backend = _backend()
    monkeypatch.setattr(Variable, "get", staticmethod(lambda key, default=None: backend.get_variable(key) or default))
    assert alert_recipients() == ["ops@example.com", "oncall@example.com"]


# -- the same route refuses a broken example ----------------------------------------------------------
def _check_adobe() -> None:
    TriggerSourceHook().get_source()


def _check_unsubscribe() -> None:
    UnsubscribeHook().get_links()


def _check_store() -> None:
    TriggersStoreHook().get_url()


def _check_smtp() -> None:
    _ = TriggerMailHook("smtp_triggers").sender


def _check_backend() -> None:
    BaseHook.get_connection("adobe_ims")


@pytest.mark.parametrize(
    ("conn_id", "change", "check", "message"),
    [
        ("adobe_triggers", {"extra": {"kind": "journal", "page_limt": 500}}, _check_adobe, "did you mean 'page_limit'"),
        ("adobe_ims", {"extra": {"org_id": "<org-id>@AdobeOrg", "auth_type": "saml"}}, _check_adobe, "auth_type"),
        ("adobe_ims", {"login": None}, _check_adobe, "no login"),
        ("triggerflow_unsubscribe", {"host": "http://unsubscribe.example.com"}, _check_unsubscribe, "https"),
        ("triggerflow_unsubscribe", {"password": None}, _check_unsubscribe, "signing secret is missing"),
        ("triggers_db", {"conn_type": "mysql"}, _check_store, "unsupported conn_type"),
        ("smtp_triggers", {"extra": {"disable_ssl": True}}, _check_smtp, "from_email"),
        ("adobe_ims", {"hostname": "https://ims-na1.adobelogin.com"}, _check_backend, "illegal keys"),
    ],
)
def test_a_broken_example_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, conn_id: str, change: dict[str, Any], check: Callable[[], None], message: str
) -> None:
    examples = _examples()
    examples[conn_id] = {k: v for k, v in {**examples[conn_id], **change}.items() if v is not None}
    broken = tmp_path / "connections.json"
    broken.write_text(json.dumps(examples), encoding="utf-8")
    _serve(monkeypatch, _backend(broken))
    with pytest.raises(Exception, match=message):
        check()
