"""The documentation: a README that fits a first screen, links that resolve, every param documented."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
PARAMETERS = DOCS / "parameters.md"

README_MAX_BYTES = 12 * 1024
CI_TEST_COMMAND = 'pytest -m ""'

# [text](target) and ![alt](target); the target ends at whitespace or ")" (an optional "title" may follow)
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
FENCE = re.compile(r"^(```|~~~).*?^\1", re.S | re.M)


def markdown_files() -> list[Path]:
    return [README, *sorted(DOCS.glob("*.md"))]


def relative_links(text: str) -> list[str]:
    text = FENCE.sub("", text)  # code blocks are not links
    text = re.sub(r"`[^`\n]*`", "", text)  # nor is inline code
    targets = []
    for target in LINK.findall(text):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I) or target.startswith(("#", "//")):
            continue  # http:, https:, mailto:, ... and anchors within the page
        targets.append(target)
    return targets


def key_paths(node: dict, prefix: str = "") -> list[str]:
    """Every key of a mapping as a dotted path, nested keys included (``head.logistic.grid.low``)."""
    paths = []
    for key, value in node.items():
        path = f"{prefix}{key}"
        paths.append(path)
        if isinstance(value, dict):
            paths += key_paths(value, f"{path}.")
    return paths


def test_readme_fits_a_first_screen():
    size = len(README.read_bytes())
    assert size <= README_MAX_BYTES, f"README.md is {size} bytes, above {README_MAX_BYTES}: move detail to docs/"


def test_relative_links_point_to_existing_files():
    broken = []
    for md in markdown_files():
        for target in relative_links(md.read_text(encoding="utf-8")):
            path = target.split("#", 1)[0]
            if path and not (md.parent / path).exists():
                broken.append(f"{md.relative_to(ROOT)}: {target}")
    assert not broken, "links to missing files:\n" + "\n".join(broken)


def test_every_param_is_documented():
    params = yaml.safe_load((ROOT / "params.yaml").read_text(encoding="utf-8"))
    text = PARAMETERS.read_text(encoding="utf-8")

    def documented(path: str) -> bool:
        return f"`{path}`" in text

    missing = []
    for section, value in params.items():
        if section == "heads":
            # named head configurations: documented once, by their shape
            for generic in ("heads.<name>.kind", "heads.<name>.<kind>.<param>"):
                if value and not documented(generic):
                    missing.append(generic)
        elif section == "finetune":
            # named fine-tune configurations: their keys, through the shipped `top` or generically
            for name, config in (value or {}).items():
                for key in key_paths(config or {}):
                    if not (documented(f"finetune.top.{key}") or documented(f"finetune.<name>.{key}")):
                        missing.append(f"finetune.{name}.{key}")
        else:
            paths = [section] + (key_paths(value, f"{section}.") if isinstance(value, dict) else [])
            missing += [path for path in paths if not documented(path)]
    assert not missing, f"keys of params.yaml not documented in {PARAMETERS.relative_to(ROOT)}:\n" + "\n".join(missing)


def test_readme_test_command_is_the_one_ci_runs():
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    readme = README.read_text(encoding="utf-8")
    assert CI_TEST_COMMAND in readme, f"README.md does not give the CI test command {CI_TEST_COMMAND}"
    assert CI_TEST_COMMAND in ci, f".ci/run does not run {CI_TEST_COMMAND}, the command README.md gives"
