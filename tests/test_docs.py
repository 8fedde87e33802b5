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


def test_the_parameter_reference_is_written_from_the_schema():
    """params.yaml's comments and docs/parameters.md's tables are what the field docstrings say."""
    from tests.params_reference import PARAMETERS_MD, PARAMS_YAML, docs_text, yaml_text

    assert yaml_text(PARAMS_YAML.read_text()) == PARAMS_YAML.read_text(), "run python -m tests.params_reference"
    assert docs_text(PARAMETERS_MD.read_text()) == PARAMETERS_MD.read_text(), "run python -m tests.params_reference"


def test_params_yaml_holds_every_key_of_the_schema_and_no_other():
    """DVC tracks and ``-S`` sets only the keys written in params.yaml, so every field is written out (named
    entries, such as ``heads.<name>``, excepted); and every key written there is a field."""
    from tests.params_reference import _summaries, generic_key

    schema = {key for key, _ in _summaries() if "<name>" not in key}
    written = {generic_key(path.split(".")) for path in key_paths(yaml.safe_load((ROOT / "params.yaml").read_text()))}
    named = ("heads.", "finetune.", "curves.heads.", "backbones.heads.", "backbones.configurations.")
    assert not schema - written, f"schema fields missing from params.yaml: {sorted(schema - written)}"
    unknown = {k for k in written - schema if not k.startswith(named) and "<name>" not in k}
    assert not unknown, f"keys of params.yaml that are no field of the schema: {sorted(unknown)}"


def test_readme_test_command_is_the_one_ci_runs():
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    readme = README.read_text(encoding="utf-8")
    assert CI_TEST_COMMAND in readme, f"README.md does not give the CI test command {CI_TEST_COMMAND}"
    assert CI_TEST_COMMAND in ci, f".ci/run does not run {CI_TEST_COMMAND}, the command README.md gives"
