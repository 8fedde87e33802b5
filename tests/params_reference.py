"""The parameter reference, written from one source: the typed schema (pipeline/core/config.py and
pipeline/core/head_params.py: each field's docstring, default and type).

A field's docstring has a short first paragraph, written as the key's comment in params.yaml, and the
reference text after it (the first paragraph when there is nothing after), written into the tables of
docs/parameters.md between ``<!-- params_reference: <section> -->`` and ``<!-- /params_reference -->``.
Values and comments on named entries (``heads.<name>``, ...) in params.yaml, and the prose of the docs,
stay as written. After changing a field, rewrite both with::

    python -m tests.params_reference

``tests/test_docs.py`` fails while either file is not what this writes.
"""

from __future__ import annotations

import ast
import functools
import inspect
import re
import sys
import textwrap
import typing

import yaml
from pydantic import BaseModel

from pipeline.core.config import HeadSection, Params
from pipeline.core.head_registry import KINDS, kinds
from tests.conftest import ROOT

PARAMS_YAML = ROOT / "params.yaml"
PARAMETERS_MD = ROOT / "docs" / "parameters.md"
COMMENT_COLUMN = 25
WIDTH = 120
BLOCK = re.compile(r"(<!-- params_reference: (\S+) -->\n).*?(<!-- /params_reference -->)", re.S)


@functools.cache
def field_docstrings(cls: type) -> dict[str, str]:
    """The docstring under each annotated field of ``cls``'s body, from its source."""
    try:
        body = ast.parse(textwrap.dedent(inspect.getsource(cls))).body[0].body
    except (OSError, TypeError):  # no source: pydantic's BaseModel, builtins
        return {}
    return {field.target.id: inspect.cleandoc(doc.value.value) for field, doc in zip(body, body[1:])
            if isinstance(field, ast.AnnAssign) and isinstance(field.target, ast.Name)
            and isinstance(doc, ast.Expr) and isinstance(doc.value, ast.Constant) and isinstance(doc.value.value, str)}


def description(model: type[BaseModel], name: str) -> str:
    """The field's docstring, from the nearest class of ``model``'s hierarchy that has one."""
    return next((text for cls in model.__mro__ if (text := field_docstrings(cls).get(name))), "")


def summary(text: str) -> str:
    return " ".join(text.split("\n\n")[0].split())


def reference(text: str) -> str:
    parts = text.split("\n\n")
    return " ".join(" ".join(parts[1:] or parts).split())


def section_model(annotation) -> type[BaseModel] | None:
    return annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None


def entries_model(annotation) -> type[BaseModel] | None:
    """``V`` of a ``dict[str, V]`` field whose values are sections (named entries)."""
    if typing.get_origin(annotation) is dict:
        return section_model(typing.get_args(annotation)[1])
    return None


def flow(value) -> str:
    if isinstance(value, BaseModel):
        value = value.model_dump(exclude_none=False)
    if isinstance(value, dict) and value and all(isinstance(v, BaseModel) for v in value.values()):
        return ", ".join(f"`{k}`" for k in value)
    text = yaml.safe_dump(value, default_flow_style=True, sort_keys=False, width=10**6).strip()
    return f"`{text.removesuffix('...').strip()}`"


# -- the schema, as (key, default, description) rows -------------------------------------------------
def head_rows(key: str, input: str, generic: bool) -> list[tuple[str, str, str]]:
    rows = [(f"{key}.kind", "" if generic else f"`{HeadSection().kind or 'logistic'}`",
             reference(description(HeadSection, "kind")) if not generic else f"the head kind: {', '.join(f'`{k}`' for k in kinds(input))}")]
    for kind in kinds(input):
        params = KINDS[kind].params
        if generic and input == "pooled":
            continue
        rows.append((f"{key}.{kind}", "", " ".join((params.__doc__ or "").split())))
        rows += model_rows(params, f"{key}.{kind}")
    if generic and input == "pooled":
        rows.append((f"{key}.<kind>.<param>", "", "the params of that kind, with the names, defaults and meanings of "
                     "`head.<kind>.<param>`"))
    return rows


def model_rows(model: type[BaseModel], prefix: str) -> list[tuple[str, str, str]]:
    rows = []
    for name, field in model.model_fields.items():
        key, text = f"{prefix}.{name}".lstrip("."), description(model, name)
        default = field.get_default(call_default_factory=True)
        if field.annotation is HeadSection:
            rows.append((key, "", reference(text)))
            rows += head_rows(key, "pooled", generic=False)
        elif (entries := entries_model(field.annotation)) is HeadSection:
            rows.append((key, flow(default) if default else "`{}`", reference(text)))
            rows += head_rows(f"{key}.<name>", "cut" if key == "finetune" else "pooled", generic=True)
        elif entries is not None:
            rows.append((key, flow(default) if default else "`{}`", reference(text)))
            rows.append((f"{key}.<name>.<param>", "", "as `backbone.<param>`"))
        elif (sub := section_model(field.annotation)) is not None and name != "grid":
            rows.append((key, "", reference(text)))
            rows += model_rows(sub, key)
        else:
            rows.append((key, flow(default), reference(text)))
            if (sub := section_model(field.annotation)) is not None:
                rows += [(f"{key}.{n}", flow(getattr(default, n)), reference(description(sub, n))) for n in sub.model_fields]
    return rows


def schema_rows() -> list[tuple[str, str, str]]:
    return model_rows(Params, "")


# -- docs/parameters.md ---------------------------------------------------------------------------
def cell(text: str) -> str:
    return text.replace("|", r"\|")


def table(rows: list[tuple[str, str, str]]) -> str:
    lines = ["| key | default | meaning |", "| --- | --- | --- |"]
    lines += [f"| `{key}` | {default} | {cell(text)} |" for key, default, text in rows]
    return "\n".join(lines) + "\n"


def section_of(key: str) -> str:
    return key.split(".")[0]


def docs_text(text: str) -> str:
    rows = schema_rows()

    def block(m: re.Match) -> str:
        scope = m.group(2)
        mine = [r for r in rows if r[0] == scope or r[0].startswith(scope + ".")]
        return m.group(1) + table(mine) + m.group(3)

    return BLOCK.sub(block, text)


# -- params.yaml ---------------------------------------------------------------------------------
_LINE = re.compile(r"^(?P<indent> *)(?P<key>[A-Za-z0-9_-]+):(?P<value>[^#]*?)\s*(?:#.*)?$")


def yaml_text(text: str) -> str:
    summaries = {key: text for key, text in _summaries()}
    out, stack = [], []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        m = _LINE.match(line)
        if not m or line.lstrip().startswith("#"):
            if line.strip().startswith("#") and out and stack and line.startswith(" " * COMMENT_COLUMN):
                i += 1  # a continuation of the comment above: rewritten with it
                continue
            out.append(line)
            i += 1
            continue
        depth = len(m.group("indent")) // 2
        stack = stack[:depth] + [m.group("key")]
        generic = generic_key(stack)
        code = f"{m.group('indent')}{m.group('key')}:{m.group('value').rstrip()}"
        if generic in summaries:
            comment = summaries[generic]
            out += commented(code, comment)
        else:
            out.append(line)  # a named entry's own line: its comment is the file's
        i += 1
    return "\n".join(out) + "\n"


def commented(code: str, comment: str) -> list[str]:
    if not comment:
        return [code]
    column = max(COMMENT_COLUMN, len(code) + 1)
    wrapped = textwrap.wrap(comment, width=max(WIDTH - column - 2, 40), break_long_words=False, break_on_hyphens=False)
    first = f"{code.ljust(column)}# {wrapped[0]}"
    return [first] + [f"{' ' * column}# {w}" for w in wrapped[1:]]


NAMED = ("heads", "finetune", "curves.heads", "backbones.heads", "backbones.configurations")


def generic_key(path: list[str]) -> str:
    """The schema key of a params.yaml path: a named entry's name becomes ``<name>``, and the settings of a
    head kind inside a named entry become those of ``head.<kind>`` (finetune: ``finetune.<name>.finetune``)."""
    key = ".".join(path)
    for named in sorted(NAMED, key=len, reverse=True):
        if key.startswith(named + "."):
            rest = key[len(named) + 1:].split(".")
            if len(rest) == 1:
                return f"{named}.{rest[0]}"  # the entry's own line: not generic
            tail = rest[1:]
            if named == "finetune":
                return ".".join([named, "<name>", *tail])
            if named == "backbones.configurations":
                return ".".join(["backbone", *tail])
            if tail[0] == "kind":
                return f"{named}.<name>.kind"  # no comment: the entry's kind speaks for itself
            return ".".join(["head", *tail])
    return key


def _summaries() -> list[tuple[str, str]]:
    out = []

    def walk(model: type[BaseModel], prefix: str) -> None:
        for name, field in model.model_fields.items():
            key = f"{prefix}.{name}".lstrip(".")
            out.append((key, summary(description(model, name))))
            if field.annotation is HeadSection:
                out.append((f"{key}.kind", summary(description(HeadSection, "kind"))))
                for kind in kinds("pooled"):
                    out.append((f"{key}.{kind}", ""))
                    walk(KINDS[kind].params, f"{key}.{kind}")
            elif (entries := entries_model(field.annotation)) is HeadSection:
                if key == "finetune":
                    out.append(("finetune.<name>.kind", ""))
                    out.append(("finetune.<name>.finetune", ""))
                    walk(KINDS["finetune"].params, "finetune.<name>.finetune")
            elif entries is None and (sub := section_model(field.annotation)) is not None:
                walk(sub, key)

    walk(Params, "")
    return out


def main() -> int:
    for path, derive in ((PARAMS_YAML, yaml_text), (PARAMETERS_MD, docs_text)):
        text = path.read_text()
        new = derive(text)
        if new != text:
            path.write_text(new)
            print(f"{path.relative_to(ROOT)}: rewritten from the schema")
        else:
            print(f"{path.relative_to(ROOT)}: already current")
    return 0


if __name__ == "__main__":
    sys.exit(main())
