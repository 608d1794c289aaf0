"""The installed package: console scripts, card templates and the embedded default, from outside the repository.

The slow test builds `capt` from a copy of this checkout and installs it (not editable) into a temporary folder, then
checks from another folder that the hub_cards templates and the embedded model and data resolve inside that install
and that the console scripts run.
"""

from __future__ import annotations

import filecmp
import json
import os
import shutil
import subprocess
import sys
import types

import pytest

from trainers import cli


REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONSOLE_SCRIPTS = {
    "capt-train", "capt-evaluate", "capt-build-bank", "capt-build-benchmark", "capt-protocol", "capt-ablations",
    "capt-build-embedded", "capt-write-space",
}


@pytest.mark.parametrize("returned, status", [({"accuracy": 50.0}, 0), (None, 0), (0, 0), (2, 2)])
def test_console_scripts_exit_0_when_main_returns_its_result(monkeypatch, returned, status):
    """A console script hands its function's return value to sys.exit: a script's summary dict must not become
    exit status 1 (and a printed dict); an int a main returns is its exit status."""
    calls = []
    script = types.ModuleType("fake_capt_script")
    script.main = lambda argv=None: calls.append(argv) or returned
    monkeypatch.setitem(sys.modules, "fake_capt_script", script)
    assert cli.run_main("fake_capt_script", ["--flag"]) == status
    assert calls == [["--flag"]]


def _copy_sources(destination: str) -> None:
    """What setup.py builds from: the top-level files and the packages (folders with an `__init__.py`)."""
    os.makedirs(destination)
    for name in os.listdir(REPO_ROOT):
        path = os.path.join(REPO_ROOT, name)
        if os.path.isfile(path) and not name.startswith("."):
            shutil.copy2(path, destination)
        elif os.path.isfile(os.path.join(path, "__init__.py")):
            shutil.copytree(path, os.path.join(destination, name), ignore=shutil.ignore_patterns("__pycache__"))


_CHECK_INSTALL = r"""
import json, os, sys
from importlib.metadata import distributions

import dataset_scripts, embedded, hub_cards, trainers
from dataset_scripts.cards import card_template
from dataset_scripts.paths import EMBEDDED_DATA, EMBEDDED_MODEL

site, templates = sys.argv[1], sys.argv[2:]
(dist,) = [dist for dist in distributions(path=[site]) if dist.metadata["Name"] == "capt"]
print(json.dumps({
    "modules": [module.__file__ for module in (dataset_scripts, embedded, hub_cards, trainers)],
    "templates": {name: str(card_template(name)) for name in templates if card_template(name).is_file()},
    "embedded": [EMBEDDED_MODEL, EMBEDDED_DATA],
    "entry_points": {ep.name: f"{ep.value} -> {ep.load().__module__}" for ep in dist.entry_points
                     if ep.group == "console_scripts"},
}))
"""


@pytest.mark.slow
def test_non_editable_install_finds_its_templates_and_embedded_default(tmp_path):
    pytest.importorskip("setuptools", reason="building the package without build isolation needs setuptools")
    source, site = str(tmp_path / "src"), str(tmp_path / "site")
    _copy_sources(source)
    install = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation", "--no-compile",
         "--target", site, source],
        capture_output=True, text=True, timeout=300,
    )
    assert install.returncode == 0, install.stdout + install.stderr

    # from a folder outside the repository, with only the install (and the environment's dependencies) importable
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    env = dict(os.environ, PYTHONPATH=site)
    templates = sorted(name for name in os.listdir(os.path.join(REPO_ROOT, "hub_cards")) if name.endswith(".md"))
    assert templates, "no card template in hub_cards/"
    # and the serving templates trainers/write_space.py copies (hub_cards/serving/, not a package)
    templates = sorted(templates + [f"serving/{name}" for name in
                                    os.listdir(os.path.join(REPO_ROOT, "hub_cards", "serving"))])
    check = subprocess.run([sys.executable, "-c", _CHECK_INSTALL, site, *templates], cwd=outside, env=env,
                           capture_output=True, text=True, timeout=300)
    assert check.returncode == 0, check.stderr
    found = json.loads(check.stdout.strip().splitlines()[-1])

    inside = os.path.join(os.path.realpath(site), "")
    assert all(os.path.realpath(path).startswith(inside) for path in found["modules"]), found["modules"]
    assert sorted(found["templates"]) == templates
    assert all(os.path.realpath(path).startswith(inside) for path in found["templates"].values())
    for path in found["embedded"]:
        assert os.path.realpath(path).startswith(inside) and os.path.isdir(path), path
        shipped = filecmp.dircmp(os.path.join(REPO_ROOT, "embedded", os.path.basename(path)), path)
        assert not (shipped.left_only or shipped.right_only or shipped.diff_files), shipped.report()
    assert set(found["entry_points"]) == CONSOLE_SCRIPTS

    script = os.path.join(site, "bin", "capt-train")
    result = subprocess.run([script, "--help"], cwd=outside, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: capt-train")
    assert "--model_name_or_path" in result.stdout


# a requirement's import name, where it differs from its distribution name
IMPORT_NAMES = {"pillow": "PIL", "pyyaml": "yaml", "pot": "ot"}
PACKAGES = ("modeling_capt", "trainers", "dataset_scripts", "hub_cards", "embedded")


def _install_requires() -> list[str]:
    import ast
    import re

    tree = ast.parse(open(os.path.join(REPO_ROOT, "setup.py"), encoding="utf-8").read())
    (call,) = [node for node in ast.walk(tree) if isinstance(node, ast.Call) and getattr(node.func, "id", "") == "setup"]
    (requires,) = [keyword.value for keyword in call.keywords if keyword.arg == "install_requires"]
    return [re.split(r"[<>=!~\[; ]", ast.literal_eval(item), maxsplit=1)[0].lower() for item in requires.elts]


def _third_party_imports() -> dict[str, str]:
    """Top-level module -> a file importing it, for every import of a non-stdlib, non-package module in the
    package's modules (the serving templates, hub_cards/serving/, are not modules: they have their own
    requirements.txt)."""
    import ast

    found = {}
    for package in PACKAGES:
        for folder, _, files in os.walk(os.path.join(REPO_ROOT, package)):
            if os.path.join("hub_cards", "serving") in folder:
                continue
            for name in files:
                if not name.endswith(".py"):
                    continue
                path = os.path.join(folder, name)
                for node in ast.walk(ast.parse(open(path, encoding="utf-8").read(), path)):
                    if isinstance(node, ast.Import):
                        modules = [alias.name for alias in node.names]
                    elif isinstance(node, ast.ImportFrom) and not node.level:
                        modules = [node.module]
                    else:
                        continue
                    for module in modules:
                        top = module.split(".")[0]
                        if top not in sys.stdlib_module_names and top not in PACKAGES:
                            found.setdefault(top, os.path.relpath(path, REPO_ROOT))
    return found


def test_install_requires_is_exactly_what_the_package_imports():
    """pip install pulls no package the code never imports, and the code imports nothing pip was not asked for
    (peft, evaluate and sentencepiece were required and never imported; pyarrow was imported and not required)."""
    required = {IMPORT_NAMES.get(name, name.replace("-", "_")) for name in _install_requires()}
    imported = _third_party_imports()
    assert sorted(required - set(imported)) == [], "required but never imported"
    assert {module: path for module, path in imported.items() if module not in required} == {}, \
        "imported but not required"
