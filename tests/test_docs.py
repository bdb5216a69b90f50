"""The documents: every relative link in README.md and docs/*.md resolves (file and heading),
every flag of the six stage scripts is on its docs/STAGE<n>.md page, the README stays a short
guide, and nothing outside the tests points to a file outside the repository."""
from __future__ import annotations

import argparse
import importlib
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "pretrained" / "README.md"]
LINK = re.compile(r"!?\[(?:[^\]\[]|\[[^\]]*\])*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
FENCE = re.compile(r"^(```|~~~)")


def prose(text: str, code_spans: bool = False) -> str:
    """The text outside fenced code blocks, and outside inline code spans unless CODE_SPANS (a
    link there is not a link; a heading keeps its code text in its anchor)."""
    out, fenced = [], False
    for line in text.splitlines():
        if FENCE.match(line.strip()):
            fenced = not fenced
            continue
        if not fenced:
            out.append(line if code_spans else re.sub(r"`[^`]*`", "", line))
    return "\n".join(out)


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: the rendered text lower-cased, punctuation dropped, spaces
    to hyphens (``## Stage 2 — AffinityNet`` -> ``stage-2--affinitynet``)."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)   # [t](u) renders as t
    text = text.replace("`", "").strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(md: Path) -> set[str]:
    seen: dict[str, int] = {}
    out = set()
    for line in prose(md.read_text(), code_spans=True).splitlines():
        m = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if m:
            s = slug(m.group(1))
            n = seen.get(s, 0)
            seen[s] = n + 1
            out.add(s if n == 0 else f"{s}-{n}")
    out.update(re.findall(r'<a (?:name|id)="([^"]+)"', md.read_text()))
    return out


def test_slug_matches_github_rules():
    assert slug("Stage 2 — AffinityNet and random-walk pseudo-labels") == \
        "stage-2--affinitynet-and-random-walk-pseudo-labels"
    assert slug("Artifact formats (`lib/io.py`)") == "artifact-formats-libiopy"
    assert slug("Time budget of run_all_voc.sh") == "time-budget-of-run_all_vocsh"


def test_link_check_finds_a_broken_link_and_a_broken_anchor(tmp_path):
    (tmp_path / "a.md").write_text("# Top\n\n[ok](b.md#real-heading) [bad](c.md) [gone](b.md#nope)\n"
                                   "```\n[in code](missing.md)\n```\n")
    (tmp_path / "b.md").write_text("## Real heading\n")
    assert broken_links(tmp_path / "a.md") == ["c.md", "b.md#nope"]


def broken_links(md: Path) -> list[str]:
    bad = []
    for target in LINK.findall(prose(md.read_text())):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):      # http:, https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        dest = (md.parent / path).resolve() if path else md
        if not dest.exists():
            bad.append(target)
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            bad.append(target)
    return bad


@pytest.mark.parametrize("md", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves(md):
    assert broken_links(md) == []


def test_readme_is_a_short_guide_in_the_newcomers_order():
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= 200
    headings = [h for h in re.findall(r"^## (.*)$", prose(text), re.M)]
    order = ["Quick start", "Reproducing VOC and COCO", "Rerunning one stage", "Outputs", "Container",
             "Troubleshooting", "Citation"]
    at = [next(i for i, h in enumerate(headings) if h.startswith(o)) for o in order]
    assert at == sorted(at), headings
    # What a newcomer looks for first: the 4-GPU command and the numbers to expect.
    assert "NPROC=4 bash run_all_voc.sh" in text and "2203.12459" in text


class _Parsed(Exception):
    def __init__(self, parser):
        self.parser = parser


def script_flags(module: str, monkeypatch) -> list[list[str]]:
    """The option strings of each argument of MODULE's parser (without -h)."""
    def capture(self, args=None, namespace=None):
        raise _Parsed(self)
    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", capture)
    with pytest.raises(_Parsed) as got:
        importlib.import_module(module).parse_args([])
    return [a.option_strings for a in got.value.parser._actions
            if a.option_strings and "-h" not in a.option_strings]


@pytest.mark.parametrize("page, modules", [
    ("STAGE1.md", ["stage1_cam.train_cam", "stage1_cam.infer_cam"]),
    ("STAGE2.md", ["stage2_aff.train_aff", "stage2_aff.infer_aff"]),
    ("STAGE3.md", ["stage3_seg.train_seg", "stage3_seg.infer_seg"]),
])
def test_every_flag_of_a_stage_is_on_its_page(page, modules, monkeypatch):
    text = (ROOT / "docs" / page).read_text()
    # The three trainings share lib.training's flags, listed once on STAGE1.md.
    text += (ROOT / "docs" / "STAGE1.md").read_text()
    missing = []
    for module in modules:
        for names in script_flags(module, monkeypatch):
            if not any(re.search(rf"(?<![\w-]){re.escape(n)}(?![\w-])", text) for n in names):
                missing.append(f"{module} {'/'.join(names)}")
    assert missing == []


def test_nothing_outside_the_tests_points_outside_the_repository():
    skip = {"tests", ".venv", ".git", "data", "exp", "demo_exp"}
    hits = []
    for path in sorted(ROOT.rglob("*")):
        rel = path.relative_to(ROOT)
        if rel.parts[0] in skip or not path.is_file() or not (
                path.suffix in {".py", ".md", ".sh", ".def"} or path.name in {"Dockerfile", "Makefile"}):
            continue
        for i, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            if re.search(r"\.\./shared|/work/|\bSPEC\b", line):
                hits.append(f"{rel}:{i}: {line.strip()}")
    assert hits == []
