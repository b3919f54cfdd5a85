"""requirements.txt (installed on top of Astro Runtime) vs requirements-dev.txt (the local venv).

The image gets Airflow and a set of providers from the Runtime tag in the Dockerfile; pip installing
any of them again from requirements.txt would replace the image's copy. The Dockerfile's
``# runtime-tag:``, ``# runtime-airflow:`` and ``# runtime-providers:`` lines say what the tag
carries; these tests hold the two requirement files and the image code to them.
"""

from __future__ import annotations

import ast
import re
import sys
from functools import cache
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[3]
IMAGE_REQUIREMENTS = ROOT / "requirements.txt"
DEV_REQUIREMENTS = ROOT / "requirements-dev.txt"
DOCKERFILE = ROOT / "Dockerfile"

#: the folders the image runs code from (Astro copies them to $AIRFLOW_HOME)
IMAGE_CODE = ("include", "dags", "plugins")
#: top-level packages of this project that image code may import (devstack, tests, bench: not in the image)
FIRST_PARTY = frozenset({"include", "dags", "plugins"})
#: distributions that come with the Runtime's Airflow itself
AIRFLOW = frozenset({"apache-airflow", "apache-airflow-core", "apache-airflow-task-sdk"})
#: dev and test tools: requirements-dev.txt only, never the image
DEV_TOOLS = frozenset({"pytest", "pytest-xdist", "ruff", "mypy", "hypothesis", "playwright", "matplotlib", "aiosmtpd"})
#: import names whose distribution is named differently (others: the import name, normalised)
IMPORT_TO_DIST = {"yaml": "pyyaml", "jwt": "pyjwt"}


def requirements(path: Path) -> tuple[list[str], dict[str, Requirement]]:
    """The ``-r`` includes and the requirements of one file, by canonical name (no recursion)."""
    includes: list[str] = []
    named: dict[str, Requirement] = {}
    for raw in path.read_text().splitlines():
        line = re.sub(r"(^|\s)#.*", "", raw).strip()
        if not line:
            continue
        if line.startswith(("-r ", "--requirement ")):
            includes.append(line.split(maxsplit=1)[1])
            continue
        req = Requirement(line)
        name = canonicalize_name(req.name)
        assert name not in named, f"{path.name} names {req.name} twice"
        named[name] = req
    return includes, named


def runtime_facts() -> dict[str, str]:
    """The Dockerfile's ``# runtime-<key>: value`` lines and its FROM image."""
    text = DOCKERFILE.read_text()
    facts = dict(re.findall(r"^# runtime-([a-z]+): *(.+?) *$", text, flags=re.MULTILINE))
    base = re.search(r"^FROM +(\S+)", text, flags=re.MULTILINE)
    assert base, "Dockerfile has no FROM line"
    facts["from"] = base.group(1)
    return facts


def runtime_providers() -> frozenset[str]:
    return frozenset(f"apache-airflow-providers-{name}" for name in runtime_facts()["providers"].split())


def exact_pin(req: Requirement) -> str | None:
    specs = list(req.specifier)
    return specs[0].version if len(specs) == 1 and specs[0].operator == "==" else None


def test_the_dockerfile_says_what_its_runtime_tag_carries() -> None:
    facts = runtime_facts()
    assert {"tag", "airflow", "providers"} <= facts.keys(), "Dockerfile lacks a # runtime-tag/-airflow/-providers line"
    image, _, tag = facts["from"].rpartition(":")
    assert image.endswith("/runtime"), f"FROM {facts['from']} is not an Astro Runtime image"
    # a new tag may carry another Airflow: the runtime-* lines are re-checked before they follow
    assert tag == facts["tag"], f"FROM uses Runtime {tag} but '# runtime-tag:' says {facts['tag']}: update both"
    assert re.fullmatch(r"\d+\.\d+-\d+", tag), tag
    assert facts["airflow"].startswith(tag.split("-")[0] + "."), "a Runtime tag carries Airflow of its major.minor"


def test_requirements_txt_leaves_airflow_and_the_runtime_providers_to_the_image() -> None:
    includes, image = requirements(IMAGE_REQUIREMENTS)
    assert not includes, "requirements.txt is what Astro installs: it includes no other file"
    assert not AIRFLOW & image.keys(), "the Runtime decides the Airflow version; pin it in requirements-dev.txt"
    shipped = runtime_providers() & image.keys()
    assert not shipped, f"the Runtime ships {sorted(shipped)}; pip would replace the image's copy"
    assert not DEV_TOOLS & image.keys(), f"dev tools belong in requirements-dev.txt: {sorted(DEV_TOOLS & image.keys())}"


def test_requirements_dev_txt_is_the_image_list_plus_airflow_of_the_runtime_tag() -> None:
    includes, dev = requirements(DEV_REQUIREMENTS)
    assert includes == ["requirements.txt"], "requirements-dev.txt must include requirements.txt (and only it)"
    airflow = dev.get("apache-airflow")
    assert airflow is not None and exact_pin(airflow) == runtime_facts()["airflow"], (
        f"requirements-dev.txt must pin apache-airflow=={runtime_facts()['airflow']}, the Airflow of the "
        "Dockerfile's Runtime tag (its '# runtime-airflow:' line)"
    )
    assert "apache-airflow-task-sdk" in dev and exact_pin(dev["apache-airflow-task-sdk"]), "pin the Task SDK too"
    for tool in sorted(DEV_TOOLS):
        assert tool in dev and exact_pin(dev[tool]), f"requirements-dev.txt must pin {tool} exactly"


def test_the_dev_pins_fall_inside_the_image_ranges() -> None:
    """The venv resolves both files together: a dev pin outside requirements.txt's range is a conflict
    pip reports only at install time, and a venv that tests other versions than the image allows."""
    _, image = requirements(IMAGE_REQUIREMENTS)
    _, dev = requirements(DEV_REQUIREMENTS)
    for name in sorted(image.keys() & dev.keys()):
        pinned = exact_pin(dev[name])
        assert pinned, f"requirements-dev.txt names {name}: pin it exactly"
        assert image[name].specifier.contains(pinned, prereleases=True), (
            f"{name}=={pinned} (requirements-dev.txt) is outside {image[name]} (requirements.txt)"
        )


def imports_of(path: Path) -> set[str]:
    """Absolute imports in one file, as dotted names (every one, at any depth, typing-only included)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module)
    return found


@cache
def image_imports() -> dict[str, frozenset[str]]:
    """Dotted import -> the image-code files importing it; the stdlib and this project left out."""
    seen: dict[str, set[str]] = {}
    for folder in IMAGE_CODE:
        for path in sorted((ROOT / folder).rglob("*.py")):
            for module in imports_of(path):
                top = module.split(".")[0]
                if top not in sys.stdlib_module_names and top not in FIRST_PARTY:
                    seen.setdefault(module, set()).add(str(path.relative_to(ROOT)))
    return {module: frozenset(files) for module, files in seen.items()}


def distributions_for(module: str) -> set[str]:
    """The distributions that may provide ``module``: a provider for ``airflow.providers.*`` (one- or
    two-part names, as ``postgres`` and ``common-sql``), Airflow for the rest of ``airflow``."""
    parts = module.split(".")
    if parts[0] != "airflow":
        return {canonicalize_name(IMPORT_TO_DIST.get(parts[0], parts[0]))}
    if len(parts) >= 3 and parts[1] == "providers":
        return {f"apache-airflow-providers-{'-'.join(parts[2:end])}" for end in (3, 4) if end <= len(parts)}
    return {"apache-airflow"}


def test_the_scan_finds_the_imports_it_is_meant_to_check() -> None:
    seen = image_imports()
    # guards the scan itself: were the folders moved or the parser broken, the next test would pass on nothing
    assert "airflow.providers.postgres.hooks.postgres" in seen
    assert "sqlalchemy" in seen


@pytest.mark.parametrize("module", sorted(image_imports()))
def test_every_image_import_comes_from_the_runtime_or_requirements_txt(module: str) -> None:
    _, image = requirements(IMAGE_REQUIREMENTS)
    available = AIRFLOW | runtime_providers() | image.keys()
    where = ", ".join(sorted(image_imports()[module]))
    assert distributions_for(module) & available, (
        f"{module} (imported by {where}) comes from {sorted(distributions_for(module))}, which neither the "
        "Runtime (Dockerfile: runtime-providers) nor requirements.txt provides: the image would lack it"
    )
