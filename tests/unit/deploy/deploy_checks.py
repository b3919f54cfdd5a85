"""What the deployment tests check, as plain functions (so each check can be shown to fail on a
made-up input, not only to pass on the real files).

- the values against our own schema (deploy/helm/values.schema.json), with Helm's merge of
  overlays;
- a scan for anything that looks like a credential: by key name, by value shape (URL with a
  password, PEM key, cloud or chat tokens, long random strings), inside embedded JSON/YAML text
  too, and in the raw text so comments are covered;
- what the code needs from a deployment, read from the code itself (AST), not from a list kept
  by hand: connection ids, Airflow Variables and pools.
"""

from __future__ import annotations

import ast
import json
import math
import re
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

PROJECT_ROOT = Path(__file__).resolve().parents[3]
HELM_DIR = PROJECT_ROOT / "deploy" / "helm"
SECRETS_DIR = PROJECT_ROOT / "deploy" / "secrets"
VALUES = HELM_DIR / "values.yaml"
SCHEMA = HELM_DIR / "values.schema.json"
OVERLAYS = (HELM_DIR / "values-aws-secrets-manager.yaml", HELM_DIR / "values-vault.yaml")
#: what is deployed (devstack/ and tests/ never are)
CODE_DIRS = ("include", "plugins", "dags")


# -- loading -------------------------------------------------------------------------------------
def load_yaml(path: Path) -> dict[str, Any]:
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    assert isinstance(data, dict), f"{path}: not a mapping"
    return data


def load_yaml_documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")) if doc]


def helm_merge(base: Mapping[str, Any], overlay: Mapping[str, Any]) -> dict[str, Any]:
    """``-f base -f overlay`` as Helm does it: maps merge key by key, null deletes the key,
    anything else replaces."""
    merged = dict(base)
    for key, value in overlay.items():
        if value is None:
            merged.pop(key, None)
        elif isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = helm_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def schema_errors(values: Mapping[str, Any], schema: Mapping[str, Any]) -> list[str]:
    """Every violation as ``path: message``, sorted (empty when the values are valid)."""
    from jsonschema import Draft202012Validator

    validator = Draft202012Validator(schema)
    errors = [f"{'.'.join(str(p) for p in e.absolute_path) or '<root>'}: {e.message}" for e in validator.iter_errors(values)]
    return sorted(errors)


def get_path(values: Mapping[str, Any], dotted: str) -> Any:
    node: Any = values
    for part in dotted.split("."):
        node = node[part]
    return node


# -- credentials -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Finding:
    where: str
    why: str

    def __str__(self) -> str:
        return f"{self.where}: {self.why}"


#: key names whose scalar value would be a credential
SENSITIVE_KEY = re.compile(
    r"pass(word|wd)?$|^pass$|secret|token|api[-_]?key|private[-_]?key|fernet[-_]?key|ssh[-_]?key|keytab"
    r"|credential|access[-_]?key|auth[-_]?key|connection$|conn_uri|broker[-_]?url|^dsn$",
    re.IGNORECASE,
)
#: ... unless the key names a Secret (or a key inside one) rather than holding its content
REFERENCE_KEY = re.compile(r"secret_?name$|secret_?key$|secretkeyref$|existing_?secret$", re.IGNORECASE)
#: environment variables that must come from a Secret (valueFrom), never an inline value
SENSITIVE_ENV = re.compile(r"PASSWORD|PASSWD|SECRET|TOKEN|_KEY$|^AIRFLOW_CONN_|CREDENTIAL|_DSN$|SQL_ALCHEMY_CONN|BROKER_URL|RESULT_BACKEND")
#: a whole value, or a URL's password, that only stands for the real thing
PLACEHOLDER = re.compile(r"^(<[^<>]*>|\$\{?[A-Za-z_][A-Za-z0-9_]*\}?|\$\([A-Za-z_][A-Za-z0-9_]*\)|\*+|x+)$")

_URL_PASSWORD = re.compile(r"\b[a-z][a-z0-9+.-]*://[^/\s:@]*:([^@\s/]+)@", re.IGNORECASE)
_ASSIGNED_SECRET = re.compile(
    r"\b(pass(?:word|wd)?|pwd|secret|token|api_?key|client_secret|secret_id|private_key)[\"']?\s*[=:]\s*[\"']?([^\s\"',;&}]+)",
    re.IGNORECASE,
)
_SHAPES: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"), "a PEM private key"),
    (re.compile(r"\b(AKIA|ASIA)[0-9A-Z]{16}\b"), "an AWS access key id"),
    (re.compile(r"\beyJ[A-Za-z0-9_-]{10,}\.eyJ[A-Za-z0-9_-]{10,}\.[A-Za-z0-9_-]*"), "a JWT"),
    (re.compile(r"\b(xox[abprs]-[A-Za-z0-9-]{10,}|gh[pousr]_[A-Za-z0-9]{30,}|glpat-[A-Za-z0-9_-]{20,}|sk-[A-Za-z0-9]{32,})"), "an API token"),
    (re.compile(r"\bhvs\.[A-Za-z0-9_-]{20,}"), "a Vault token"),
)
_RANDOM_RUN = re.compile(r"[A-Za-z0-9+/=_-]{32,}")
_ARN = re.compile(r"\barn:aws[a-z-]*:[^\s`'\"]+")


def is_placeholder(text: str) -> bool:
    return bool(PLACEHOLDER.match(text.strip()))


def _entropy(text: str) -> float:
    counts = Counter(text)
    return -sum(n / len(text) * math.log2(n / len(text)) for n in counts.values())


def _secret_like(value: str) -> bool:
    """A value after ``password=`` / ``secret:`` in free text that is not prose: prose has short
    lower-case words (``password = the signing secret``), a secret has digits, symbols, mixed case
    or length. Structured values are judged by their key instead (:func:`scan_values`)."""
    if is_placeholder(value) or value.startswith("<"):
        return False
    mixed = bool(re.search(r"[0-9]|[^A-Za-z0-9]", value)) or (value.lower() != value and value.upper() != value)
    return (len(value) >= 6 and mixed) or len(value) >= 12


def _looks_random(run: str) -> bool:
    classes = sum(bool(re.search(p, run)) for p in (r"[a-z]", r"[A-Z]", r"[0-9]"))
    return classes >= 3 and _entropy(run) >= 4.2


def scan_text(text: str, where: str) -> list[Finding]:
    """Credential shapes in free text (a value, or a line of a file, comments included)."""
    found: list[Finding] = []
    text = _ARN.sub("<arn>", text)  # arn:aws:secretsmanager:...:secret:name names a secret, it is not one
    for match in _URL_PASSWORD.finditer(text):
        if not is_placeholder(match.group(1)):
            found.append(Finding(where, "a URL with a password in it"))
    for match in _ASSIGNED_SECRET.finditer(text):
        if _secret_like(match.group(2)):
            found.append(Finding(where, f"{match.group(1)} given a value"))
    for pattern, what in _SHAPES:
        if pattern.search(text):
            found.append(Finding(where, what))
    found.extend(Finding(where, "a long random string (a key?)") for run in _RANDOM_RUN.findall(text) if _looks_random(run))
    return found


def _embedded(text: str) -> Any:
    """JSON or YAML carried inside a string value (backend_kwargs, extraEnvFrom, ConfigMap data)."""
    stripped = text.strip()
    if stripped.startswith(("{", "[")):
        try:
            return json.loads(stripped)
        except ValueError:
            pass
    if "\n" in stripped:
        try:
            return yaml.safe_load(stripped)
        except yaml.YAMLError:
            return None
    return None


def scan_values(node: Any, where: str = "") -> list[Finding]:
    """Credentials anywhere in a parsed values tree (keys, scalars, env items, embedded text)."""
    found: list[Finding] = []
    if isinstance(node, Mapping):
        name = node.get("name")
        if isinstance(name, str) and "value" in node and SENSITIVE_ENV.search(name) and node["value"] not in (None, ""):
            found.append(Finding(f"{where}.{name}", "a credential-like environment variable with an inline value (use valueFrom.secretKeyRef)"))
        for key, value in node.items():
            here = f"{where}.{key}" if where else str(key)
            scalar = isinstance(value, str | int | float) and not isinstance(value, bool)
            if scalar and str(value) != "" and SENSITIVE_KEY.search(str(key)) and not REFERENCE_KEY.search(str(key)) and not is_placeholder(str(value)):
                found.append(Finding(here, "the key holds a credential (name a Secret instead)"))
            found.extend(scan_values(value, here))
    elif isinstance(node, list):
        for i, item in enumerate(node):
            found.extend(scan_values(item, f"{where}[{i}]"))
    elif isinstance(node, str):
        found.extend(scan_text(node, where))
        inner = _embedded(node)
        if isinstance(inner, dict | list):
            found.extend(scan_values(inner, f"{where}<embedded>"))
    return found


def scan_file(path: Path) -> list[Finding]:
    """Every line of a file, so a credential in a comment is caught as well."""
    rel = path.relative_to(PROJECT_ROOT) if path.is_relative_to(PROJECT_ROOT) else path
    return [f for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1) for f in scan_text(line, f"{rel}:{n}")]


# -- what the code needs -------------------------------------------------------------------------
CONN_NAME = re.compile(r"(^|_)conn_id$|^default_conn_name$|CONN_ID$", re.IGNORECASE)
POOL_NAME = re.compile(r"(^|_)POOL$")
CONNECTION_LOOKUPS = frozenset({"get_connection", "get_connection_from_secrets", "get_conn_value"})


def _str(node: ast.AST | None) -> str | None:
    return node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) else None


def _target_names(node: ast.Assign | ast.AnnAssign) -> Iterator[str]:
    for target in node.targets if isinstance(node, ast.Assign) else [node.target]:
        if isinstance(target, ast.Name):
            yield target.id
        elif isinstance(target, ast.Attribute):
            yield target.attr


def _constants(tree: ast.Module) -> dict[str, str]:
    return {
        name: value
        for node in tree.body
        if isinstance(node, ast.Assign | ast.AnnAssign) and (value := _str(node.value)) is not None
        for name in _target_names(node)
    }


@dataclass
class CodeNeeds:
    """Connection ids, Variables and pools the deployed code refers to, each with where."""

    connections: dict[str, set[str]]
    variables: dict[str, set[str]]
    pools: dict[str, set[str]]


def needs_of_sources(sources: Mapping[str, str]) -> CodeNeeds:
    """What ``{path: python source}`` refers to. Module-level string constants of all the files
    resolve names such as ``Variable.get(ALERT_EMAILS_VARIABLE)``."""
    trees = {path: ast.parse(text, filename=path) for path, text in sources.items()}
    constants: dict[str, str] = {}
    for tree in trees.values():
        constants.update(_constants(tree))
    needs = CodeNeeds({}, {}, {})

    def add(table: dict[str, set[str]], value: str | None, where: str) -> None:
        if value:
            table.setdefault(value, set()).add(where)

    def resolve(node: ast.AST | None) -> str | None:
        return _str(node) if not isinstance(node, ast.Name) else constants.get(node.id)

    for path, tree in trees.items():
        for node in ast.walk(tree):
            where = f"{path}:{getattr(node, 'lineno', 0)}"
            if isinstance(node, ast.Assign | ast.AnnAssign):
                for name in _target_names(node):
                    if CONN_NAME.search(name):
                        add(needs.connections, _str(node.value), where)
                    if POOL_NAME.search(name):
                        add(needs.pools, _str(node.value), where)
            elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                args = node.args
                positional = args.posonlyargs + args.args
                defaults = [None] * (len(positional) - len(args.defaults)) + list(args.defaults)
                for arg, default in [*zip(positional, defaults), *zip(args.kwonlyargs, args.kw_defaults)]:
                    if CONN_NAME.search(arg.arg):
                        add(needs.connections, _str(default), where)
            elif isinstance(node, ast.Call):
                for keyword in node.keywords:
                    if keyword.arg and CONN_NAME.search(keyword.arg):
                        add(needs.connections, _str(keyword.value), where)
                    if keyword.arg == "pool":
                        add(needs.pools, _str(keyword.value), where)
                func = node.func
                attr = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
                if attr in CONNECTION_LOOKUPS and node.args:
                    add(needs.connections, resolve(node.args[0]), where)
                is_variable_get = (
                    isinstance(func, ast.Attribute) and func.attr == "get"
                    and isinstance(func.value, ast.Name) and func.value.id == "Variable"
                )
                if is_variable_get and node.args:
                    add(needs.variables, resolve(node.args[0]), where)
    return needs


def code_needs(root: Path = PROJECT_ROOT) -> CodeNeeds:
    sources = {
        str(path.relative_to(root)): path.read_text(encoding="utf-8")
        for folder in CODE_DIRS
        for path in sorted((root / folder).rglob("*.py"))
    }
    return needs_of_sources(sources)
