"""A stand-in for ``helm template`` on the small subset of Go template syntax that the chart in
configs/helm/streamvsr uses, so that the chart can be rendered and its manifests validated where
helm itself cannot be installed (it is in none of the package registries this project reaches).
Where helm is on PATH, tests/test_deploy_cluster.py also renders the chart with it and requires
the same manifests.

The subset, and nothing else (anything else raises ``Unsupported``, so that the chart cannot
drift into syntax this renderer would get wrong):

- ``{{ .Values.a.b }}``, ``{{ .Release.Name }}``, ``{{ .Release.Namespace }}``,
  ``{{ .Chart.Name }}``, ``{{ .Chart.Version }}``, ``{{ .Chart.AppVersion }}``: a scalar, printed
  as Go's ``%v`` prints it. Helm reads values.yaml numbers as float64, so 8080 prints as 8080 but
  1000000 as ``1e+06``: such a number raises here (quote it in values.yaml). A missing key, a
  null, a map or a list raises too (helm would print ``<no value>``, ``map[...]``, ``[...]``).
- ``{{- if .Values.x }}`` ... ``{{- end }}``, nested: Go's truth (false, 0, null, "", an empty
  list or map are false); a missing last key is false, a missing key before it raises (helm:
  "nil pointer evaluating"). No ``else``, ``with``, ``range``, ``not``, ``eq``, variables.
- ``{{ toYaml .Values.x | nindent N }}``: the value as block YAML (keys sorted, trailing newline
  dropped, as Helm's toYaml), each line indented by N spaces, after a newline.
- ``{{-`` and ``-}}`` trim the white space (spaces, tabs, newlines) before and after, as in Go.

Rendered like helm: every ``templates/*.yaml`` file (``_*`` helpers and NOTES.txt are not
manifests), split into YAML documents, empty ones dropped.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping
from decimal import Decimal
from pathlib import Path
from typing import Any

import yaml

ACTION = re.compile(r"\{\{(-?)(.*?)(-?)\}\}", re.S)
REF = r"\.(?:Values|Release|Chart)(?:\.[A-Za-z_][A-Za-z0-9_]*)+"
SCALAR = re.compile(rf"^({REF})$")
IF = re.compile(rf"^if\s+({REF})$")
TO_YAML = re.compile(rf"^toYaml\s+({REF})\s*\|\s*nindent\s+(\d+)$")
GO_SPACE = " \t\r\n"


class Unsupported(ValueError):
    """Template syntax outside the subset, or a value helm would print wrongly."""


_MISSING = object()


def go_number(value: float | int) -> str:
    """``fmt.Sprint(float64(value))``: Go's shortest %g, which switches to an exponent at 1e+06
    (and below 1e-04); those raise here, since they are never what a manifest wants."""
    if value == 0:
        return "0"
    digits = Decimal(repr(float(value))).normalize()
    exponent = digits.adjusted()
    if exponent < -4 or exponent >= 6:
        raise Unsupported(f"helm would print {value!r} as {float(value):.6g} (Go %v of float64)")
    return format(digits, "f")


def go_truth(value: Any) -> bool:
    if value is None or value is _MISSING:
        return False
    if isinstance(value, (bool, int, float, str, list, dict)):
        return bool(value)
    raise Unsupported(f"no Go truth value for {value!r}")


def to_yaml(value: Any) -> str:
    """Helm's toYaml: block YAML, keys sorted, no trailing newline."""
    text = yaml.safe_dump(value, default_flow_style=False, sort_keys=True, width=1_000_000)
    return text.removesuffix("\n...\n").removesuffix("\n")


def nindent(spaces: int, text: str) -> str:
    pad = " " * spaces
    return "\n" + pad + text.replace("\n", "\n" + pad)


def deep_merge(base: dict[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """Values with overrides layered on (maps merged key by key, as ``--set`` / ``-f`` do)."""
    out = copy.deepcopy(base)
    for key, value in overrides.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


class Context:
    def __init__(self, values: dict[str, Any], chart: dict[str, Any], release: str, namespace: str):
        self.root = {
            "Values": values,
            "Chart": {
                "Name": chart["name"],
                "Version": str(chart["version"]),
                "AppVersion": str(chart.get("appVersion", "")),
            },
            "Release": {"Name": release, "Namespace": namespace, "Service": "Helm"},
        }

    def lookup(self, ref: str, missing_ok: bool = False) -> Any:
        keys = ref.lstrip(".").split(".")
        node: Any = self.root
        for i, key in enumerate(keys):
            if not isinstance(node, dict):
                raise Unsupported(f"{ref}: {'.'.join(keys[:i])} is not a map")
            if key not in node:
                if missing_ok and i == len(keys) - 1:
                    return _MISSING
                raise Unsupported(f"{ref}: no {key!r} (helm: <no value> or a nil pointer error)")
            node = node[key]
        return node

    def scalar(self, ref: str) -> str:
        value = self.lookup(ref)
        if isinstance(value, bool):
            return "true" if value else "false"
        if isinstance(value, (int, float)):
            return go_number(value)
        if isinstance(value, str):
            return value
        raise Unsupported(f"{ref} is {type(value).__name__}, not a scalar: use toYaml")


def render_text(template: str, ctx: Context, name: str = "<template>") -> str:
    """One template file, rendered."""
    pieces: list[tuple[str, str]] = []  # ("text", s) or ("action", body)
    pos = 0
    for match in ACTION.finditer(template):
        text = template[pos : match.start()]
        if match.group(1):
            text = text.rstrip(GO_SPACE)
        pieces.append(("text", text))
        pieces.append(("action", match.group(2).strip()))
        pos = match.end()
        if match.group(3):
            rest = template[pos:]
            pos += len(rest) - len(rest.lstrip(GO_SPACE))
    if "{{" in template[pos:] or "}}" in template[pos:]:
        raise Unsupported(f"{name}: an unclosed or stray template delimiter")
    pieces.append(("text", template[pos:]))

    out: list[str] = []
    emitting = [True]  # one entry per open `if`, and the file itself
    for kind, body in pieces:
        if kind == "text":
            if all(emitting):
                out.append(body)
            continue
        if m := IF.match(body):
            emitting.append(go_truth(ctx.lookup(m.group(1), missing_ok=True)))
        elif body == "end":
            if len(emitting) == 1:
                raise Unsupported(f"{name}: `end` without `if`")
            emitting.pop()
        elif not all(emitting):
            continue  # inside a false `if`: not evaluated, as in Go
        elif m := TO_YAML.match(body):
            out.append(nindent(int(m.group(2)), to_yaml(ctx.lookup(m.group(1)))))
        elif m := SCALAR.match(body):
            out.append(ctx.scalar(m.group(1)))
        else:
            raise Unsupported(f"{name}: {{{{ {body} }}}} is outside the supported subset")
    if len(emitting) != 1:
        raise Unsupported(f"{name}: `if` without `end`")
    return "".join(out)


def render_chart(
    chart_dir: Path,
    values: Mapping[str, Any] | None = None,
    release: str = "streamvsr",
    namespace: str = "default",
) -> dict[str, str]:
    """templates/<file> -> rendered text, with ``values`` layered over the chart's values.yaml."""
    chart = yaml.safe_load((chart_dir / "Chart.yaml").read_text())
    defaults = yaml.safe_load((chart_dir / "values.yaml").read_text()) or {}
    ctx = Context(deep_merge(defaults, values or {}), chart, release, namespace)
    rendered = {}
    for path in sorted((chart_dir / "templates").iterdir()):
        if path.name.startswith("_") or path.suffix not in (".yaml", ".yml"):
            continue
        rendered[f"templates/{path.name}"] = render_text(path.read_text(), ctx, path.name)
    return rendered


def manifests(rendered: Mapping[str, str]) -> list[dict[str, Any]]:
    """The Kubernetes objects of rendered templates, empty documents dropped."""
    out = []
    for name, text in rendered.items():
        for doc in yaml.safe_load_all(text):
            if doc is None:
                continue
            if not isinstance(doc, dict) or "kind" not in doc:
                raise AssertionError(f"{name}: a document that is not an object: {doc!r}")
            out.append(doc)
    return out
