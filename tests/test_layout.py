"""The project's layout: the pyramid has no upward imports (lib/ and the stages never import
tools/), and every module and script path that the docs, the Makefile, the runners and the
container recipes name exists, so the commands they show run as written."""
from __future__ import annotations

import ast
import importlib.util
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("tools", "lib", "stage1_cam", "stage2_aff", "stage3_seg")
MODULE = re.compile(rf"\b((?:{'|'.join(PACKAGES)})(?:\.[A-Za-z_]\w*)+)")
SCRIPT = re.compile(r"(?<![\w.-])(tools/[\w/]+\.(?:sh|py))\b")


def referring_files() -> list[Path]:
    files = [ROOT / "README.md", ROOT / "Makefile", ROOT / "pytorch.def", ROOT / "Dockerfile",
             ROOT / ".ci" / "run", ROOT / "pretrained" / "README.md"]
    files += sorted((ROOT / "docs").glob("*.md")) + sorted(ROOT.glob("*.sh"))
    files += sorted((ROOT / "tools").rglob("*.sh"))
    return [f for f in files if f.is_file()]


def imported_modules(path: Path) -> set[str]:
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.add(node.module)
    return out


def test_lib_and_stages_never_import_tools():
    offenders = []
    for pkg in ("lib", "stage1_cam", "stage2_aff", "stage3_seg"):
        for path in sorted((ROOT / pkg).rglob("*.py")):
            bad = sorted(m for m in imported_modules(path) if m == "tools" or m.startswith("tools."))
            if bad:
                offenders.append(f"{path.relative_to(ROOT)}: {', '.join(bad)}")
    assert not offenders, "upward imports:\n" + "\n".join(offenders)


def test_the_import_check_finds_an_upward_import(tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text("import os\nfrom tools.evaluate import main\nfrom lib import io\n")
    assert imported_modules(probe) == {"os", "tools.evaluate", "lib"}


def _module_exists(name: str) -> bool:
    # "tools.evaluate.main" in prose may name a function: accept the longest importable prefix
    # only when the remainder is an attribute of it.
    parts = name.split(".")
    for cut in range(len(parts), 0, -1):
        mod = ".".join(parts[:cut])
        try:
            spec = importlib.util.find_spec(mod)
        except ModuleNotFoundError:
            spec = None
        if spec is not None:
            if cut == len(parts):
                return True
            module = importlib.import_module(mod)
            return hasattr(module, parts[cut])
    return False


@pytest.mark.parametrize("path", referring_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_named_modules_and_scripts_exist(path):
    text = path.read_text()
    missing = sorted({m for m in MODULE.findall(text) if not _module_exists(m)})
    missing += sorted({s for s in SCRIPT.findall(text) if not (ROOT / s).is_file()})
    assert not missing, f"{path.relative_to(ROOT)} names what does not exist: {missing}"
