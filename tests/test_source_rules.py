"""Rules the source tree keeps, checked on its syntax: nothing read from storage is unpickled,
and no shell command is built (a URL or a value from data could then run as a command)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("storage", "pipelines", "training", "shardflow")
UNPICKLERS = {("pickle", "load"), ("pickle", "loads"), ("cloudpickle", "load"), ("cloudpickle", "loads"),
              ("dill", "load"), ("dill", "loads"), ("marshal", "load"), ("marshal", "loads"), ("joblib", "load"),
              ("pickle", "Unpickler"), ("shelve", "open"), ("pd", "read_pickle"), ("pandas", "read_pickle"),
              ("yaml", "load"), ("yaml", "unsafe_load"), ("yaml", "full_load")}  # YAML tags can build objects
SHELLS = {("os", "system"), ("os", "popen"), ("subprocess", "getoutput"), ("subprocess", "getstatusoutput"),
          ("os", "execl"), ("os", "execlp"), ("os", "spawnl"), ("os", "spawnlp")}
SUBPROCESS_CALLS = {"run", "Popen", "call", "check_call", "check_output"}


def _sources() -> list[Path]:
    return sorted(p for package in PACKAGES for p in (ROOT / package).rglob("*.py"))


def _dotted(node: ast.AST) -> tuple[str, str] | None:
    """``module.name`` of a call target like ``pickle.loads`` as ``("pickle", "loads")``."""
    if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
        return node.value.id, node.attr
    return None


def violations(source: str, name: str = "<text>") -> list[str]:
    """What in ``source`` breaks the rules, as ``file:line: what``."""
    found = []
    tree = ast.parse(source, name)
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module in {"pickle", "cloudpickle", "dill", "marshal", "shelve"}:
            found.append(f"{name}:{node.lineno}: imports from {node.module}")
        if not isinstance(node, ast.Call):
            continue
        target = _dotted(node.func)
        if target in UNPICKLERS:
            found.append(f"{name}:{node.lineno}: {'.'.join(target)} unpickles")
        if target in SHELLS:
            found.append(f"{name}:{node.lineno}: {'.'.join(target)} runs a shell")
        if isinstance(node.func, ast.Name) and node.func.id in {"eval", "exec"}:
            found.append(f"{name}:{node.lineno}: {node.func.id}() runs text as code")
        keywords = {k.arg: k.value for k in node.keywords}
        if target is not None and target[1] == "load" and target[0] in {"np", "numpy"}:
            allow = keywords.get("allow_pickle")
            if allow is not None and not (isinstance(allow, ast.Constant) and allow.value is False):
                found.append(f"{name}:{node.lineno}: numpy.load with allow_pickle")
        shell = keywords.get("shell")
        if shell is not None and not (isinstance(shell, ast.Constant) and shell.value is False):
            found.append(f"{name}:{node.lineno}: shell={ast.unparse(shell)}")
        is_subprocess = (target is not None and target[0] == "subprocess" and target[1] in SUBPROCESS_CALLS) or (
            isinstance(node.func, ast.Name) and node.func.id in {"Popen", "check_output", "check_call"})
        if is_subprocess and node.args and not isinstance(node.args[0], (ast.List, ast.Tuple, ast.Name,
                                                                             ast.Attribute, ast.Call)):
            found.append(f"{name}:{node.lineno}: a subprocess command given as {type(node.args[0]).__name__}, "
                         "not an argument list")
    return found


def test_no_unpickling_and_no_shell_commands_in_the_package_source() -> None:
    sources = _sources()
    assert len(sources) > 50  # the tree was found
    found = [v for path in sources for v in violations(path.read_text(), str(path.relative_to(ROOT)))]
    assert found == []


@pytest.mark.parametrize("code", [
    "import pickle\npickle.loads(fs.cat_file(path))",
    "import cloudpickle\ncloudpickle.load(f)",
    "from pickle import loads",
    "import numpy as np\nnp.load(path, allow_pickle=True)",
    "import subprocess\nsubprocess.run(f'gsutil cp {url} .', shell=True)",
    "import subprocess\nsubprocess.check_output('ls ' + url)",
    "import subprocess\nsubprocess.Popen(f'rm {path}')",
    "import os\nos.system('rm -rf ' + path)",
    "import yaml\nyaml.load(text, Loader=yaml.Loader)",
    "eval(row['expr'])",
])
def test_the_check_finds_what_it_looks_for(code: str) -> None:
    assert violations(code)


@pytest.mark.parametrize("code", [
    "import subprocess\nsubprocess.run(['shardflow', 'train', url], check=True)",
    "import subprocess\nsubprocess.Popen(command, stdin=subprocess.DEVNULL)",
    "import numpy as np\nnp.load(path)",
    "import json\njson.loads(text)",
    "import yaml\nyaml.safe_load(text)",
])
def test_the_check_allows_argument_lists_and_plain_formats(code: str) -> None:
    assert violations(code) == []
