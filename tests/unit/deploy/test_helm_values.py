"""deploy/helm/values.yaml (and its overlays) for the apache-airflow/airflow chart 1.22.x.

No helm binary and no copy of the chart are available offline, so the values are checked against
our own schema of the chart keys we set (deploy/helm/values.schema.json), plus what a schema
cannot say: no credential anywhere, every connection / Variable / pool the code uses is provided,
every Secret the values name exists in the example with the keys the chart reads, and only the
unsubscribe endpoint is public. Each check also has a test showing it fails on a bad input.
"""

from __future__ import annotations

import ast
import copy
import json
import re
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from tests.unit.deploy.deploy_checks import (
    HELM_DIR,
    OVERLAYS,
    PROJECT_ROOT,
    SCHEMA,
    SECRETS_DIR,
    VALUES,
    code_needs,
    get_path,
    helm_merge,
    load_yaml,
    load_yaml_documents,
    needs_of_sources,
    scan_file,
    scan_values,
    schema_errors,
)

#: the release name the values' header fixes (PgBouncer and Redis hosts depend on it)
RELEASE = "triggerflow"
SECRETS_EXAMPLE = HELM_DIR / "secrets.example.yaml"
INGRESS = HELM_DIR / "unsubscribe-ingress.yaml"
CONNECTIONS_EXAMPLE = SECRETS_DIR / "connections.example.json"
VARIABLES_EXAMPLE = SECRETS_DIR / "variables.example.json"
SECRETS_README = SECRETS_DIR / "README.md"

#: which key the chart reads from each Secret the values name (the chart's documented contract)
SECRET_KEYS: dict[str, tuple[str, ...]] = {
    "data.metadataSecretName": ("connection",),
    "data.resultBackendSecretName": ("connection",),
    "data.brokerUrlSecretName": ("connection",),
    "fernetKeySecretName": ("fernet-key",),
    "apiSecretKeySecretName": ("api-secret-key",),
    "jwtSecretName": ("jwt-secret",),
    "redis.passwordSecretName": ("password",),
    "pgbouncer.configSecretName": ("pgbouncer.ini", "users.txt"),
    "pgbouncer.metricsExporterSidecar.statsSecretName": ("connection",),
}


@pytest.fixture(scope="module")
def values() -> dict[str, Any]:
    return load_yaml(VALUES)


@pytest.fixture(scope="module")
def schema() -> dict[str, Any]:
    return json.loads(SCHEMA.read_text(encoding="utf-8"))


def _all_values(values: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The values as deployed: alone, and with each overlay merged the way Helm merges ``-f``."""
    return {VALUES.name: values, **{o.name: helm_merge(values, load_yaml(o)) for o in OVERLAYS}}


def _secret_manifests() -> dict[str, dict[str, Any]]:
    docs = load_yaml_documents(SECRETS_EXAMPLE)
    assert all(d["kind"] == "Secret" for d in docs)
    return {d["metadata"]["name"]: d for d in docs}


def _secret_name_paths(node: Any, where: str = "") -> dict[str, str]:
    """Every ``...SecretName`` key in the values: dotted path -> the Secret it names."""
    found: dict[str, str] = {}
    if isinstance(node, dict):
        for key, value in node.items():
            here = f"{where}.{key}" if where else key
            if key.endswith("SecretName") and isinstance(value, str):
                found[here] = value
            found.update(_secret_name_paths(value, here))
    return found


def _pools_declared(values: dict[str, Any]) -> dict[str, dict[str, Any]]:
    pools: dict[str, dict[str, Any]] = {}
    for config_map in values.get("extraConfigMaps", {}).values():
        files = yaml.safe_load(config_map["data"])
        if "pools.json" in files:
            pools.update(json.loads(files["pools.json"]))
    return pools


def _secrets_backend(values: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """The ``[secrets] backend`` class and its parsed kwargs ("" and {} without one)."""
    secrets = values["config"].get("secrets")
    if not secrets:
        return "", {}
    raw = secrets["backend_kwargs"]
    return secrets["backend"], (json.loads(raw) if raw else {})


def _env_secrets(values: dict[str, Any]) -> list[str]:
    """The Secrets whose keys become environment variables (``extraEnvFrom``)."""
    refs = yaml.safe_load(values.get("extraEnvFrom") or "[]") or []
    return [ref["secretRef"]["name"] for ref in refs if "secretRef" in ref]


#: provider namespaces whose distribution takes two segments (airflow.providers.common.sql -> common-sql)
TWO_SEGMENT_PROVIDERS = frozenset({"common", "cncf", "microsoft", "apache", "atlassian", "alibaba"})


def _provider(module_path: str) -> str | None:
    """``airflow.providers.amazon.aws.secrets...`` -> ``amazon``; ``...common.sql...`` -> ``common-sql``
    (the suffix of the apache-airflow-providers-* distribution)."""
    parts = module_path.split(".")
    if parts[:2] != ["airflow", "providers"] or len(parts) < 4:
        return None
    take = 2 if parts[2] in TWO_SEGMENT_PROVIDERS else 1
    return "-".join(parts[2 : 2 + take]).replace("_", "-")


def _providers_needed(values: dict[str, Any]) -> dict[str, str]:
    """Provider distributions (suffix) the values rely on, with the value that needs each."""
    needed = {"celery": "executor"} if "CeleryExecutor" in values["executor"] else {}
    for dotted in ("config.secrets.backend", "config.core.auth_manager"):
        try:
            provider = _provider(get_path(values, dotted))
        except KeyError:
            continue
        if provider:
            needed[provider] = dotted
    return needed


def _providers_in_the_image() -> set[str]:
    """What the Dockerfile's Runtime tag ships (its ``# runtime-providers:`` line) plus what
    requirements.txt installs on top."""
    dockerfile = (PROJECT_ROOT / "Dockerfile").read_text(encoding="utf-8")
    line = re.search(r"^# runtime-providers:(.*)$", dockerfile, re.MULTILINE)
    assert line, "the Dockerfile no longer says which providers its Runtime tag ships"
    shipped = set(line.group(1).split())
    requirements = (PROJECT_ROOT / "requirements.txt").read_text(encoding="utf-8")
    added = set(re.findall(r"^apache-airflow-providers-([a-z0-9-]+)", requirements, re.MULTILINE | re.IGNORECASE))
    return shipped | {name.lower() for name in added}


# -- the schema ------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", [VALUES.name, *(o.name for o in OVERLAYS)])
def test_values_and_overlays_match_our_schema(values: dict[str, Any], schema: dict[str, Any], name: str) -> None:
    assert schema_errors(_all_values(values)[name], schema) == []


def test_the_schema_itself_is_valid(schema: dict[str, Any]) -> None:
    from jsonschema import Draft202012Validator

    Draft202012Validator.check_schema(schema)


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"workers": {"celery": {"keda": {"enabeld": True}}}}, "workers.celery.keda: Additional properties"),
        ({"workers": {"keda": {"enabled": True}}}, "workers: Additional properties"),  # deprecated in 1.20
        ({"data": {"metadataConnection": {"user": "airflow", "pass": "hunter22"}}}, "data: Additional properties"),
        ({"dags": {"gitSync": {"enabled": True}}}, "dags.gitSync.enabled: False was expected"),
        ({"executor": "KubernetesExecutor"}, "executor: 'CeleryExecutor' was expected"),
        ({"pgbouncer": {"enabled": False}}, "pgbouncer.enabled: True was expected"),
        ({"workers": {"celery": {"keda": {"minReplicaCount": 0}}}}, "minReplicaCount: 0 is less than the minimum"),
        ({"defaultAirflowTag": "latest"}, "defaultAirflowTag"),
        ({"config": {"celery": {"worker_concurrency": "8"}}}, "worker_concurrency: '8' is not of type 'integer'"),
        ({"scheduler": {"resources": {"requests": {"cpu": 1}}}}, "scheduler.resources.requests.cpu: 1 is not of type 'string'"),
        ({"airflowVersion": "3.2.2"}, "airflowVersion: '3.2.2' does not match"),
        ({"fernetKey": "ZmVybmV0LWtleS1leGFtcGxlLTEyMzQ1Njc4OTBhYmNkZWY="}, "<root>: Additional properties"),
    ],
)
def test_the_schema_refuses_typos_inline_credentials_and_wrong_choices(
    values: dict[str, Any], schema: dict[str, Any], change: dict[str, Any], expected: str
) -> None:
    errors = schema_errors(helm_merge(copy.deepcopy(values), change), schema)
    assert any(expected in e for e in errors), errors


#: sections of provider packages that are in the image but not in the test venv
PROVIDER_SECTIONS = {"celery": "apache-airflow-providers-celery (Astro Runtime ships it)"}


def test_every_airflow_option_set_or_allowed_exists_in_airflow(values: dict[str, Any], schema: dict[str, Any]) -> None:
    """Our schema says which options may be set; Airflow's own configuration description says
    which exist. Both must agree, so neither a typo nor a wrong schema slips through."""
    from airflow.configuration import retrieve_configuration_description

    known = retrieve_configuration_description(include_airflow=True, include_providers=True)
    allowed = {
        section: set(spec.get("properties", {}))
        for section, spec in schema["properties"]["config"]["properties"].items()
    }
    used = {section: set(options) for merged in _all_values(values).values() for section, options in merged["config"].items()}
    for section, options in [*allowed.items(), *used.items()]:
        if section in PROVIDER_SECTIONS:
            continue
        assert section in known, f"[{section}] is not an Airflow configuration section"
        assert options <= set(known[section]["options"]), f"[{section}] {sorted(options - set(known[section]['options']))}"


# -- the choices the issue asks for --------------------------------------------------------------
def test_celery_with_keda_pgbouncer_and_dags_in_the_image(values: dict[str, Any]) -> None:
    assert values["executor"] == "CeleryExecutor"
    keda = values["workers"]["celery"]["keda"]
    assert keda["enabled"] is True and 1 <= keda["minReplicaCount"] <= keda["maxReplicaCount"]
    assert values["pgbouncer"]["enabled"] is True
    assert values["dags"]["gitSync"]["enabled"] is False and values["dags"]["persistence"]["enabled"] is False
    assert values["postgresql"]["enabled"] is False  # the metadata DB is external
    assert values["createUserJob"]["enabled"] is False  # no default admin login
    assert values["airflowVersion"].startswith("3.3.")


def test_worker_capacity_covers_the_smtp_pool_and_the_minute_run(values: dict[str, Any]) -> None:
    # The values' comments promise: the minimum workers hold every send chunk the pool allows
    # plus the other tasks of a run (pull, validate, reconcile, report), and the maximum too.
    slots = _pools_declared(values)["smtp_sessions"]["slots"]
    per_worker = values["config"]["celery"]["worker_concurrency"]
    keda = values["workers"]["celery"]["keda"]
    assert keda["minReplicaCount"] * per_worker >= slots + 4
    assert keda["maxReplicaCount"] * per_worker >= slots + 4


# -- no credentials ----------------------------------------------------------------------------------
def test_no_credential_in_the_values_or_the_overlays(values: dict[str, Any]) -> None:
    for name, merged in _all_values(values).items():
        assert [str(f) for f in scan_values(merged)] == [], name


def test_no_credential_in_any_file_under_deploy() -> None:
    # *.local.* are the filled-in copies deploy/.gitignore keeps out of git (real values by design)
    files = sorted(p for p in (PROJECT_ROOT / "deploy").rglob("*") if p.is_file() and ".local." not in p.name)
    assert VALUES in files and CONNECTIONS_EXAMPLE in files
    assert [str(f) for p in files for f in scan_file(p)] == []


def test_connections_come_from_exactly_one_place_without_a_credential(values: dict[str, Any]) -> None:
    for name, merged in _all_values(values).items():
        backend, kwargs = _secrets_backend(merged)
        # one source: a backend, or the Kubernetes Secret; both would hide which one wins, none
        # leaves the hooks without connections
        assert bool(backend) != bool(_env_secrets(merged)), name
        forbidden = {"token", "secret_id", "role_id", "password", "aws_access_key_id", "aws_secret_access_key", "aws_session_token"}
        assert forbidden.isdisjoint(kwargs), (name, sorted(forbidden & set(kwargs)))
        if backend.endswith("VaultBackend"):
            assert kwargs["auth_type"] == "kubernetes", name  # the pod's service account, no token


@pytest.mark.parametrize(
    ("change", "why"),
    [
        ({"data": {"brokerUrl": "redis://:hunter22@redis:6379/0"}}, "a URL with a password"),
        ({"createUserJob": {"defaultUser": {"password": "admin123"}}}, "holds a credential"),
        ({"fernetKey": "ZmVybmV0LWtleS1leGFtcGxlLTEyMzQ1Njc4OTBhYmNkZWY="}, "holds a credential"),
        ({"env": [{"name": "AIRFLOW_CONN_ADOBE_IMS", "value": '{"conn_type": "http"}'}]}, "inline value"),
        ({"config": {"secrets": {"backend_kwargs": '{"url": "https://vault", "token": "hvs.CAESIAbcdefghijklmnopqrstuvwxyz"}'}}}, "holds a credential"),
        ({"extraEnvFrom": "- secretRef:\n    name: x\n# AKIAIOSFODNN7EXAMPLE\n"}, "AWS access key"),
    ],
)
def test_the_scan_finds_credentials(values: dict[str, Any], change: dict[str, Any], why: str) -> None:
    findings = scan_values(helm_merge(copy.deepcopy(values), change))
    assert any(why in f.why for f in findings), [str(f) for f in findings]


def test_the_file_scan_reads_comments_too(tmp_path: Path) -> None:
    clean = "data:\n  metadataSecretName: triggerflow-airflow-metadata\n"
    leaked = tmp_path / "values.yaml"
    leaked.write_text(clean + "# old: postgresql://airflow:S3cretPassw0rd@db:5432/airflow\n", encoding="utf-8")
    assert [f.why for f in scan_file(leaked)] == ["a URL with a password in it"]
    leaked.write_text(clean, encoding="utf-8")
    assert scan_file(leaked) == []


# -- what the code needs is provided -----------------------------------------------------------------
def test_the_code_scan_finds_connections_variables_and_pools() -> None:
    needs = needs_of_sources({
        "a.py": (
            'NAME = "alerts_var"\n'
            'class H:\n    default_conn_name = "one"\n'
            'def f(smtp_conn_id: str = "two", *, x_conn_id="three"): ...\n'
            'BaseHook.get_connection("four")\nConnection.get_connection_from_secrets(OTHER_CONN_ID)\n'
            'OTHER_CONN_ID = "five"\nVariable.get(NAME)\n'
            '@task(pool="p1")\ndef g(): ...\nSEND_POOL = "p2"\n'
            'conn_name_attr = "not_a_connection"\n'
        )
    })
    assert set(needs.connections) == {"one", "two", "three", "four", "five"}
    assert set(needs.variables) == {"alerts_var"}
    assert set(needs.pools) == {"p1", "p2"}


def test_every_connection_the_code_uses_has_an_example_secret() -> None:
    used = code_needs().connections
    # the known ones, so a scan that silently stops finding anything fails here
    assert {"adobe_ims", "adobe_triggers", "smtp_triggers", "triggers_db", "triggerflow_unsubscribe", "airflow_metadata"} <= set(used)
    examples = json.loads(CONNECTIONS_EXAMPLE.read_text(encoding="utf-8"))
    missing = {conn_id: sorted(where) for conn_id, where in used.items() if conn_id not in examples}
    assert missing == {}, "connections used by the code without an example in deploy/secrets/"
    assert set(examples) - set(used) == set(), "example connections no code uses"


def test_every_variable_the_code_reads_has_an_example() -> None:
    used = code_needs().variables
    assert "triggerflow_alert_emails" in used
    assert set(used) <= set(json.loads(VARIABLES_EXAMPLE.read_text(encoding="utf-8")))


def test_the_backend_in_each_values_file_is_where_the_runbook_puts_the_secrets(values: dict[str, Any]) -> None:
    """The values name where connections come from; deploy/secrets/README.md loads the example
    connections into that same place, so the two cannot drift apart."""
    runbook = SECRETS_README.read_text(encoding="utf-8")
    for name, merged in _all_values(values).items():
        backend, kwargs = _secrets_backend(merged)
        if backend.endswith("SecretsManagerBackend"):
            places = [kwargs["connections_prefix"], kwargs["variables_prefix"]]
        elif backend.endswith("VaultBackend"):
            places = [f"{kwargs['mount_point']}/{kwargs['connections_path']}", f"{kwargs['mount_point']}/{kwargs['variables_path']}"]
        else:  # AIRFLOW_CONN_* / AIRFLOW_VAR_* from a Kubernetes Secret
            places = [*_env_secrets(merged), "AIRFLOW_CONN_", "AIRFLOW_VAR_TRIGGERFLOW_ALERT_EMAILS"]
        assert places, name
        for place in places:
            assert place in runbook, f"{name}: {place!r} is not in {SECRETS_README.relative_to(PROJECT_ROOT)}"


def test_the_image_has_the_providers_the_values_rely_on(values: dict[str, Any]) -> None:
    needed = _providers_needed(values)
    assert {"celery", "fab"} <= set(needed)
    missing = {provider: why for provider, why in _providers_needed(values).items() if provider not in _providers_in_the_image()}
    assert missing == {}, "add apache-airflow-providers-<name> to requirements.txt"


def test_each_overlay_names_the_provider_it_needs(values: dict[str, Any]) -> None:
    base = set(_providers_needed(values))
    for overlay in OVERLAYS:
        extra = set(_providers_needed(helm_merge(values, load_yaml(overlay)))) - base
        assert extra, overlay.name  # each overlay switches to a backend from a provider
        text = overlay.read_text(encoding="utf-8")
        for provider in extra:
            assert f"apache-airflow-providers-{provider}" in text, f"{overlay.name} must say it needs {provider}"


def test_every_pool_the_code_uses_is_declared_and_mounted(values: dict[str, Any]) -> None:
    pools = _pools_declared(values)
    assert set(code_needs().pools) <= set(pools)
    for pool in pools.values():
        assert pool["slots"] >= 1 and pool["description"]
    # the ConfigMap holding pools.json is the one mounted in the scheduler, at the path the
    # documented `airflow pools import` command reads
    (config_map_name,) = values["extraConfigMaps"]
    volumes = {v["name"]: v for v in values["scheduler"]["extraVolumes"]}
    (mount,) = [m for m in values["scheduler"]["extraVolumeMounts"] if volumes[m["name"]].get("configMap")]
    assert volumes[mount["name"]]["configMap"]["name"] == config_map_name
    assert f"airflow pools import {mount['mountPath']}/pools.json" in VALUES.read_text(encoding="utf-8")


# -- the Secrets the values name -------------------------------------------------------------------
def test_every_secret_the_values_name_is_in_the_example_with_the_keys_the_chart_reads(values: dict[str, Any]) -> None:
    named = _secret_name_paths(values)
    assert set(named) == set(SECRET_KEYS), "a new *SecretName needs its keys in SECRET_KEYS and the example"
    manifests = _secret_manifests()
    for path, secret in named.items():
        assert secret in manifests, f"{path}: Secret {secret!r} missing from {SECRETS_EXAMPLE.name}"
        assert set(SECRET_KEYS[path]) <= set(manifests[secret]["stringData"]), path
    assert set(manifests) == set(named.values()), "example Secrets the values do not use"


def test_the_metadata_db_and_result_backend_go_through_pgbouncer(values: dict[str, Any]) -> None:
    secrets = {name: m["stringData"] for name, m in _secret_manifests().items()}
    ini = secrets[values["pgbouncer"]["configSecretName"]]["pgbouncer.ini"]
    aliases = {line.split("=", 1)[0].strip() for line in ini.split("[pgbouncer]")[0].splitlines()[1:] if "=" in line}
    for path, scheme in (("data.metadataSecretName", "postgresql"), ("data.resultBackendSecretName", "db+postgresql")):
        url = urlsplit(secrets[get_path(values, path)]["connection"])
        assert url.scheme == scheme, path
        assert url.hostname and url.hostname.split(".")[0] == f"{RELEASE}-pgbouncer" and url.port == 6543, path
        assert url.path.lstrip("/") in aliases, path
    broker = urlsplit(secrets[values["data"]["brokerUrlSecretName"]]["connection"])
    assert broker.scheme == "redis" and broker.hostname == f"{RELEASE}-redis"


# -- what is public ------------------------------------------------------------------------------------
def _plugin_prefix() -> str:
    tree = ast.parse((PROJECT_ROOT / "plugins" / "unsubscribe.py").read_text(encoding="utf-8"))
    (prefix,) = [
        node.value.value for node in tree.body
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "PREFIX" for t in node.targets)
        and isinstance(node.value, ast.Constant)
    ]
    return str(prefix)


def test_only_the_unsubscribe_endpoint_is_public(values: dict[str, Any]) -> None:
    (ingress,) = load_yaml_documents(INGRESS)
    assert ingress["kind"] == "Ingress"
    (rule,) = ingress["spec"]["rules"]
    paths = rule["http"]["paths"]
    assert [p["path"] for p in paths] == [_plugin_prefix() + "/"]
    assert paths[0]["backend"]["service"]["name"] == f"{RELEASE}-api-server"
    # the links in the emails point at this host: the connection's host
    links_host = urlsplit(json.loads(CONNECTIONS_EXAMPLE.read_text(encoding="utf-8"))["triggerflow_unsubscribe"]["host"])
    assert links_host.scheme == "https" and rule["host"] == links_host.hostname
    assert ingress["metadata"]["annotations"]["nginx.ingress.kubernetes.io/upstream-vhost"] == rule["host"]
    assert ingress["spec"]["tls"][0]["hosts"] == [rule["host"]]
    # and nothing else: no chart ingress, a ClusterIP API server, no Flower
    assert "ingress" not in values
    assert values["apiServer"]["service"]["type"] == "ClusterIP"
    assert values["flower"]["enabled"] is False
