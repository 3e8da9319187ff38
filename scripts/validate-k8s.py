#!/usr/bin/env python3
"""Offline validation of the Kubernetes artefacts: the Helm chart, the CRD
copy it ships and ChatCluster objects. No cluster, no helm, no kubectl: only
Python 3.11, PyYAML and jsonschema (scripts/test.sh installs them).

Checks:
  (a) charts/chat/values.yaml against charts/chat/values.schema.json, plus
      value sets that must be rejected;
  (b) every template is well formed at the Go-template level: balanced
      {{ }}, one `end` per if/range/with/define/block, no tabs; files without
      template actions parse as YAML;
  (c) charts/chat/crds/chatcluster.yaml is byte-identical to
      crds/chatcluster.yaml (the generated CRD);
  (d) examples/chatcluster.yaml against the CRD's openAPIV3Schema turned into
      a JSON Schema, bad ChatClusters rejected by it, and the CRD's two CEL
      rules (which cannot be evaluated here) checked by hand-written Python
      equivalents on good and bad objects: those cases test the Python copy,
      not the rules the API server runs, so they are counted as "not
      verified" (see below);
  (e) charts/chat/ci/default-chatcluster.yaml (the default ChatCluster the
      chart creates) against the CRD schema;
  (f) the chart rendered by a small Go-template interpreter (the subset of
      text/template and sprig the chart uses; it is NOT helm) with the
      default values and other value sets: every document parses as YAML and
      has the expected shape and security settings, and the rendered
      ChatCluster equals (e)'s file.

The last line printed is "N passed, M failed, K not verified"; the exit
status is non-zero when anything failed. "Not verified" counts the checks
that ran without the real engine (the CEL cases above, which go through this
script's Python copy of the rules; such a case still fails the run when the
copy disagrees) or did not run at all (shellcheck of the Redis cluster-init
script when shellcheck is not installed). Each is printed on a line of its
own starting with "unverified". The Kubernetes issue replaces them with real
engines; until then a green run does not cover them.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import json
import random
import re
import shutil
import string
import subprocess
import sys
import traceback
from pathlib import Path

try:
    import jsonschema
    import yaml
except ImportError as err:  # pragma: no cover - reported, not tested
    print(f"validate-k8s: {err}; run: python3 -m pip install pyyaml jsonschema", file=sys.stderr)
    print("0 passed, 1 failed")
    sys.exit(1)

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "charts" / "chat"
CRD_PATH = ROOT / "crds" / "chatcluster.yaml"


class Report:
    def __init__(self) -> None:
        self.passed = 0
        self.failed = 0
        self.not_verified = 0

    def check(self, name: str, ok: bool, detail: str = "") -> bool:
        if ok:
            self.passed += 1
            print(f"ok    {name}")
        else:
            self.failed += 1
            print(f"FAIL  {name}" + (f"\n      {detail}" if detail else ""))
        return ok

    def unverified(self, name: str, why: str) -> None:
        """A check that did not run against the real engine: neither passed nor failed."""
        self.not_verified += 1
        print(f"unverified  {name}: {why}")

    def check_without_engine(self, name: str, ok: bool, why: str, detail: str = "") -> bool:
        """A check done by a stand-in for the real engine (a Python copy of a
        CEL rule): a disagreement fails the run, an agreement is only counted
        as not verified."""
        if not ok:
            return self.check(name, ok, detail)
        self.unverified(name, why)
        return ok


# ---------------------------------------------------------------------------
# A small Go text/template interpreter with the sprig functions the chart
# uses. Strict where Helm is strict (unknown functions, field access on nil,
# comparing an int with a float, %d of a float) so mistakes show up here.
# Values are loaded as Helm does: every number is a float64.
# ---------------------------------------------------------------------------


class TemplateError(Exception):
    pass


class HelmFail(Exception):
    """The chart called `fail`."""


ACTION_RE = re.compile(r"\{\{(-[ \t\r\n])?(.*?)([ \t\r\n]-)?\}\}", re.S)
TOKEN_RE = re.compile(
    r"""
    (?P<str>"(?:\\.|[^"\\])*")
  | (?P<raw>`[^`]*`)
  | (?P<decl>:=)
  | (?P<assign>=)
  | (?P<pipe>\|)
  | (?P<lp>\()
  | (?P<rp>\))
  | (?P<comma>,)
  | (?P<var>\$[A-Za-z0-9_]*(?:\.[A-Za-z0-9_]+)*)
  | (?P<field>\.[A-Za-z0-9_]+(?:\.[A-Za-z0-9_]+)*|\.)
  | (?P<num>-?\d+(?:\.\d+)?)
  | (?P<ident>[A-Za-z_][A-Za-z0-9_]*)
  | (?P<ws>\s+)
    """,
    re.X,
)
BLOCK_KEYWORDS = ("if", "range", "with", "define", "block")
NOVAL = object()


def tokenize(src: str) -> list[tuple[str, str]]:
    out, pos = [], 0
    while pos < len(src):
        m = TOKEN_RE.match(src, pos)
        if not m:
            raise TemplateError(f"cannot lex {src[pos:pos + 20]!r} in {{{{{src}}}}}")
        pos = m.end()
        if m.lastgroup != "ws":
            out.append((m.lastgroup, m.group()))
    return out


def split_actions(text: str) -> list:
    """Text and actions with Go's trim markers applied: [str | (tokens-src)]."""
    parts: list = []
    pos = 0
    trim_next = False
    for m in ACTION_RE.finditer(text):
        chunk = text[pos:m.start()]
        if trim_next:
            chunk = chunk.lstrip(" \t\r\n")
        if m.group(1):
            chunk = chunk.rstrip(" \t\r\n")
        parts.append(chunk)
        body = m.group(2).strip()
        if not (body.startswith("/*") and body.endswith("*/")):
            parts.append(("action", body))
        trim_next = bool(m.group(3))
        pos = m.end()
    chunk = text[pos:]
    if trim_next:
        chunk = chunk.lstrip(" \t\r\n")
    parts.append(chunk)
    return parts


class Parser:
    """Builds nodes: ("text", s) ("out", pipe) ("if", [(pipe, body)], else)
    ("range", vars, pipe, body, else) ("with", pipe, body, else)."""

    def __init__(self, parts: list, defines: dict) -> None:
        self.parts = parts
        self.i = 0
        self.defines = defines

    def parse(self, stop=("end",), top: bool = False) -> tuple[list, str, list]:
        nodes: list = []
        while self.i < len(self.parts):
            part = self.parts[self.i]
            self.i += 1
            if isinstance(part, str):
                if part:
                    nodes.append(("text", part))
                continue
            toks = tokenize(part[1])
            if not toks:
                raise TemplateError("empty action")
            kind, word = toks[0]
            if kind == "ident" and word in ("end", "else"):
                if word not in stop:
                    raise TemplateError(f"unexpected {{{{{part[1]}}}}}")
                return nodes, word, toks[1:]
            if kind == "ident" and word == "if":
                nodes.append(self.parse_if(toks[1:]))
            elif kind == "ident" and word == "range":
                nodes.append(self.parse_range(toks[1:]))
            elif kind == "ident" and word == "with":
                pipe = parse_pipeline(toks[1:])
                body, end, _ = self.parse(("end", "else"))
                other = self.parse(("end",))[0] if end == "else" else []
                nodes.append(("with", pipe, body, other))
            elif kind == "ident" and word == "define":
                name = json.loads(toks[1][1])
                body, _, _ = self.parse(("end",))
                self.defines[name] = body
            elif kind == "ident" and word == "template":
                name = json.loads(toks[1][1])
                pipe = parse_pipeline(toks[2:]) if len(toks) > 2 else None
                nodes.append(("template", name, pipe))
            else:
                nodes.append(("out", parse_pipeline(toks)))
        if not top:
            raise TemplateError("missing {{ end }}")
        return nodes, "eof", []

    def parse_if(self, toks: list) -> tuple:
        branches = []
        cond = parse_pipeline(toks)
        while True:
            body, end, rest = self.parse(("end", "else"))
            branches.append((cond, body))
            if end == "end":
                return ("if", branches, [])
            if rest and rest[0] == ("ident", "if"):
                cond = parse_pipeline(rest[1:])
                continue
            other, _, _ = self.parse(("end",))
            return ("if", branches, other)

    def parse_range(self, toks: list) -> tuple:
        names: list[str] = []
        if any(k == "decl" for k, _ in toks):
            while toks[0][0] == "var":
                names.append(toks[0][1])
                toks = toks[1:]
                if toks[0][0] == "comma":
                    toks = toks[1:]
            if toks[0][0] != "decl":
                raise TemplateError("bad range declaration")
            toks = toks[1:]
        pipe = parse_pipeline(toks)
        body, end, _ = self.parse(("end", "else"))
        other = self.parse(("end",))[0] if end == "else" else []
        return ("range", names, pipe, body, other)


def parse_pipeline(toks: list) -> dict:
    decl = None
    if len(toks) >= 2 and toks[0][0] == "var" and toks[1][0] in ("decl", "assign"):
        decl = (toks[0][1], toks[1][0])
        toks = toks[2:]
    cmds: list[list] = [[]]
    depth = 0
    i = 0
    while i < len(toks):
        kind, text = toks[i]
        if kind == "pipe" and depth == 0:
            cmds.append([])
            i += 1
            continue
        if kind == "lp":
            # a parenthesised pipeline operand
            depth_inner, j = 1, i + 1
            while depth_inner:
                if j >= len(toks):
                    raise TemplateError("unbalanced parentheses")
                if toks[j][0] == "lp":
                    depth_inner += 1
                elif toks[j][0] == "rp":
                    depth_inner -= 1
                j += 1
            cmds[-1].append(("paren", parse_pipeline(toks[i + 1:j - 1])))
            i = j
            continue
        if kind == "rp":
            raise TemplateError("unbalanced parentheses")
        if kind == "str":
            cmds[-1].append(("lit", json.loads(text)))
        elif kind == "raw":
            cmds[-1].append(("lit", text[1:-1]))
        elif kind == "num":
            cmds[-1].append(("lit", float(text) if "." in text else int(text)))
        elif kind == "field":
            cmds[-1].append(("field", [] if text == "." else text[1:].split(".")))
        elif kind == "var":
            name, *fields = text.split(".")
            cmds[-1].append(("var", name, fields))
        elif kind == "ident":
            cmds[-1].append(("ident", text))
        else:
            raise TemplateError(f"unexpected {text!r}")
        i += 1
    if any(not c for c in cmds):
        raise TemplateError("empty command in pipeline")
    return {"decl": decl, "cmds": cmds}


def is_num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def go_float(f: float) -> str:
    """fmt %v of a float64 (strconv 'g', shortest): 5000 -> 5000, 1e6 -> 1e+06."""
    if f == 0:
        return "0"
    sign = "-" if f < 0 else ""
    digits = repr(abs(f))
    # shortest digits and decimal exponent from repr
    m = re.fullmatch(r"(\d+)(?:\.(\d*))?(?:e([+-]\d+))?", digits)
    assert m, digits
    intpart, frac, e = m.group(1), m.group(2) or "", int(m.group(3) or 0)
    all_digits = (intpart + frac).lstrip("0")
    lead_zeros = len(intpart + frac) - len((intpart + frac).lstrip("0"))
    exp10 = len(intpart) - 1 + e - lead_zeros  # exponent of the first digit
    nd = len(all_digits.rstrip("0")) or 1
    d = all_digits.rstrip("0") or "0"
    eprec = 6  # Go: "if precision was the shortest possible, use precision 6"
    if exp10 < -4 or exp10 >= eprec:
        m2 = d[0] + ("." + d[1:] if len(d) > 1 else "")
        return f"{sign}{m2}e{'+' if exp10 >= 0 else '-'}{abs(exp10):02d}"
    if exp10 >= 0:
        if nd <= exp10 + 1:
            return sign + d + "0" * (exp10 + 1 - nd)
        return sign + d[: exp10 + 1] + "." + d[exp10 + 1:]
    return sign + "0." + "0" * (-exp10 - 1) + d


def strval(v) -> str:
    if v is None:
        return ""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return go_float(v)
    if isinstance(v, (dict, list)):
        return json.dumps(v)  # Go prints map[...]; never wanted in a manifest
    return str(v)


def truth(v) -> bool:
    if v is None:
        return False
    if isinstance(v, bool):
        return v
    if is_num(v):
        return v != 0
    if isinstance(v, (str, list, dict, tuple)):
        return len(v) > 0
    return True


def to_int(v) -> int:
    if v is None:
        return 0
    if isinstance(v, bool):
        return int(v)
    if isinstance(v, str):
        try:
            return int(float(v))
        except ValueError:
            return 0
    return int(v)


def plain(v):
    """Helm's toYaml goes through JSON: integral float64 print as integers."""
    if isinstance(v, float) and v.is_integer() and abs(v) < 1e15:
        return int(v)
    if isinstance(v, dict):
        return {k: plain(x) for k, x in v.items()}
    if isinstance(v, list):
        return [plain(x) for x in v]
    return v


def go_printf(fmt: str, *args) -> str:
    out, ai = [], 0
    i = 0
    while i < len(fmt):
        c = fmt[i]
        if c != "%":
            out.append(c)
            i += 1
            continue
        verb = fmt[i + 1]
        i += 2
        if verb == "%":
            out.append("%")
            continue
        if ai >= len(args):
            raise TemplateError(f"printf {fmt!r}: missing argument")
        a = args[ai]
        ai += 1
        if verb == "s":
            if not isinstance(a, str):
                raise TemplateError(f"printf %s of {type(a).__name__} {a!r}")
            out.append(a)
        elif verb == "d":
            if not isinstance(a, int) or isinstance(a, bool):
                raise TemplateError(f"printf %d of {type(a).__name__} {a!r} (use int)")
            out.append(str(a))
        elif verb == "v":
            out.append(strval(a))
        elif verb == "q":
            out.append(json.dumps(strval(a)))
        else:
            raise TemplateError(f"printf verb %{verb} not supported here")
    return "".join(out)


def compare(a, b, op: str):
    if is_num(a) and is_num(b):
        if isinstance(a, float) != isinstance(b, float):
            raise TemplateError(f"incompatible types for comparison: {a!r} {op} {b!r} (int vs float64; use int)")
    elif type(a) is not type(b) and not (a is None or b is None):
        raise TemplateError(f"incompatible types for comparison: {a!r} {op} {b!r}")
    return {"eq": a == b, "ne": a != b, "lt": a < b, "le": a <= b, "gt": a > b, "ge": a >= b}[op]


class Renderer:
    def __init__(self, defines: dict) -> None:
        self.defines = defines
        self.funcs = {
            "include": self.include,
            "toYaml": lambda v: yaml.safe_dump(plain(v), default_flow_style=False, sort_keys=True).rstrip("\n")
            if v not in (None, {}, []) else ("{}" if v == {} else "[]" if v == [] else "null"),
            "toJson": lambda v: json.dumps(plain(v), sort_keys=True, separators=(",", ":")),
            "nindent": lambda n, s: "\n" + self.funcs["indent"](n, s),
            "indent": lambda n, s: " " * to_int(n) + strval(s).replace("\n", "\n" + " " * to_int(n)),
            "quote": lambda *a: " ".join(json.dumps(strval(x)) for x in a if x is not None),
            "squote": lambda *a: " ".join("'" + strval(x) + "'" for x in a if x is not None),
            "default": lambda d, *given: d if not given or not truth(given[0]) else given[0],
            "empty": lambda v: not truth(v),
            "required": self.required,
            "fail": self.fail,
            "printf": go_printf,
            "print": lambda *a: "".join(strval(x) for x in a),
            "toString": strval,
            "trunc": lambda n, s: s[: to_int(n)] if to_int(n) >= 0 else s[to_int(n):],
            "trimSuffix": lambda suf, s: s[: -len(suf)] if suf and s.endswith(suf) else s,
            "trimPrefix": lambda pre, s: s[len(pre):] if pre and s.startswith(pre) else s,
            "trim": lambda s: s.strip(),
            "upper": lambda s: s.upper(),
            "lower": lambda s: s.lower(),
            "contains": lambda sub, s: sub in s,
            "hasPrefix": lambda pre, s: s.startswith(pre),
            "replace": lambda old, new, s: s.replace(old, new),
            "list": lambda *a: list(a),
            "dict": lambda *a: {a[i]: a[i + 1] for i in range(0, len(a), 2)},
            "get": lambda d, k: d.get(k, "") if isinstance(d, dict) else self.fail(f"get on {type(d).__name__}"),
            "hasKey": lambda d, k: k in d,
            "append": lambda lst, v: list(lst or []) + [v],
            "join": lambda sep, lst: sep.join(strval(x) for x in (lst or [])),
            "splitList": lambda sep, s: s.split(sep),
            "until": lambda n: list(range(to_int(n))),
            "len": lambda v: len(v or []),
            "index": self.index,
            "int": to_int,
            "int64": to_int,
            "float64": lambda v: float(v),
            "add": lambda *a: sum(to_int(x) for x in a),
            "sub": lambda a, b: to_int(a) - to_int(b),
            "ternary": lambda vt, vf, cond: vt if truth(cond) else vf,
            "not": lambda v: not truth(v),
            "eq": lambda a, *bs: any(compare(a, b, "eq") for b in bs),
            "ne": lambda a, b: compare(a, b, "ne"),
            "lt": lambda a, b: compare(a, b, "lt"),
            "le": lambda a, b: compare(a, b, "le"),
            "gt": lambda a, b: compare(a, b, "gt"),
            "ge": lambda a, b: compare(a, b, "ge"),
            "sha256sum": lambda s: hashlib.sha256(strval(s).encode()).hexdigest(),
            "b64enc": lambda s: base64.b64encode(strval(s).encode()).decode(),
            "randAlphaNum": lambda n: "".join(random.choice(string.ascii_letters + string.digits) for _ in range(to_int(n))),
            # like `helm template` / --dry-run: nothing to look up
            "lookup": lambda *a: {},
        }

    @staticmethod
    def fail(msg):
        raise HelmFail(strval(msg))

    @staticmethod
    def required(msg, v):
        if not truth(v):
            raise HelmFail(strval(msg))
        return v

    @staticmethod
    def index(coll, *keys):
        for k in keys:
            if isinstance(coll, list):
                coll = coll[to_int(k)]
            elif isinstance(coll, dict):
                coll = coll.get(k)
            else:
                raise TemplateError(f"index of {type(coll).__name__}")
        return coll

    def include(self, name, data):
        if name not in self.defines:
            raise TemplateError(f'no template "{name}"')
        return self.render_nodes(self.defines[name], data, [{"$": data}])

    # -- evaluation ---------------------------------------------------------

    @staticmethod
    def walk(value, fields: list[str], what: str):
        for f in fields:
            if value is None:
                raise TemplateError(f"nil pointer evaluating {what}.{f}")
            if isinstance(value, dict):
                value = value.get(f)
            else:
                raise TemplateError(f"can't evaluate field {f} in {type(value).__name__}")
        return value

    @staticmethod
    def lookup_var(scopes: list[dict], name: str):
        for s in reversed(scopes):
            if name in s:
                return s[name]
        raise TemplateError(f"undefined variable {name}")

    def operand(self, op, dot, scopes, call_ident=True):
        kind = op[0]
        if kind == "lit":
            return op[1]
        if kind == "field":
            return self.walk(dot, op[1], "")
        if kind == "var":
            return self.walk(self.lookup_var(scopes, op[1]), op[2], op[1])
        if kind == "paren":
            return self.pipeline(op[1], dot, scopes)
        if kind == "ident":
            name = op[1]
            if name in ("true", "false"):
                return name == "true"
            if name == "nil":
                return None
            return self.call(name, [])
        raise TemplateError(f"bad operand {op}")

    def call(self, name, args):
        fn = self.funcs.get(name)
        if fn is None:
            raise TemplateError(f'function "{name}" not defined')
        try:
            return fn(*args)
        except (HelmFail, TemplateError):
            raise
        except Exception as err:  # wrong arity or types: Helm errors too
            raise TemplateError(f"{name}{tuple(args)!r}: {err}") from err

    def command(self, cmd, dot, scopes, piped):
        head = cmd[0]
        if head[0] == "ident" and head[1] not in ("true", "false", "nil"):
            name = head[1]
            if name in ("and", "or"):
                vals = [self.operand(o, dot, scopes) for o in cmd[1:]]
                if piped is not NOVAL:
                    vals.append(piped)
                for v in vals:
                    if truth(v) != (name == "and"):
                        return v
                return vals[-1]
            args = [self.operand(o, dot, scopes) for o in cmd[1:]]
            if piped is not NOVAL:
                args.append(piped)
            return self.call(name, args)
        if len(cmd) > 1 or piped is not NOVAL:
            raise TemplateError(f"can't give arguments to non-function {head}")
        return self.operand(head, dot, scopes)

    def pipeline(self, pipe, dot, scopes):
        value = NOVAL
        for cmd in pipe["cmds"]:
            value = self.command(cmd, dot, scopes, value)
        if pipe["decl"]:
            name, how = pipe["decl"]
            if how == "decl":
                scopes[-1][name] = value
            else:
                for s in reversed(scopes):
                    if name in s:
                        s[name] = value
                        break
                else:
                    raise TemplateError(f"undefined variable {name}")
            return NOVAL
        return value

    def render_nodes(self, nodes, dot, scopes) -> str:
        out: list[str] = []
        for node in nodes:
            kind = node[0]
            if kind == "text":
                out.append(node[1])
            elif kind == "out":
                v = self.pipeline(node[1], dot, scopes)
                if v is not NOVAL:
                    out.append(strval(v))
            elif kind == "if":
                for cond, body in node[1]:
                    if truth(self.pipeline(cond, dot, scopes)):
                        out.append(self.render_nodes(body, dot, scopes + [{}]))
                        break
                else:
                    out.append(self.render_nodes(node[2], dot, scopes + [{}]))
            elif kind == "with":
                v = self.pipeline(node[1], dot, scopes)
                if truth(v):
                    out.append(self.render_nodes(node[2], v, scopes + [{}]))
                else:
                    out.append(self.render_nodes(node[3], dot, scopes + [{}]))
            elif kind == "range":
                names, pipe, body, other = node[1:]
                coll = self.pipeline(pipe, dot, scopes)
                items = sorted(coll.items()) if isinstance(coll, dict) else list(enumerate(coll or []))
                if not items:
                    out.append(self.render_nodes(other, dot, scopes + [{}]))
                for k, v in items:
                    scope = {}
                    if len(names) == 1:
                        scope[names[0]] = v
                    elif len(names) == 2:
                        scope[names[0]], scope[names[1]] = k, v
                    out.append(self.render_nodes(body, v, scopes + [scope]))
            elif kind == "template":
                data = self.pipeline(node[2], dot, scopes) if node[2] else None
                out.append(self.include(node[1], data))
        return "".join(out)


def parse_template(text: str, defines: dict) -> list:
    nodes, _, _ = Parser(split_actions(text), defines).parse((), top=True)
    return nodes


def floats(v):
    """Helm reads every number in values as float64."""
    if isinstance(v, bool):
        return v
    if isinstance(v, int):
        return float(v)
    if isinstance(v, dict):
        return {k: floats(x) for k, x in v.items()}
    if isinstance(v, list):
        return [floats(x) for x in v]
    return v


def deep_merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def render_chart(values: dict, release: str = "chat", namespace: str = "chat") -> dict[str, str]:
    """Renders every template like `helm template`: {file name: text}."""
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    tdir = CHART / "templates"
    defines: dict = {}
    parsed = {}
    for path in sorted(tdir.iterdir()):
        parsed[path.name] = parse_template(path.read_text(), defines)
        defines[f"chat/templates/{path.name}"] = parsed[path.name]  # as Helm names them
    top = {
        "Values": floats(values),
        "Chart": {"Name": chart["name"], "Version": chart["version"], "AppVersion": str(chart["appVersion"])},
        "Release": {"Name": release, "Namespace": namespace, "Service": "Helm", "Revision": 1.0,
                    "IsInstall": True, "IsUpgrade": False},
        "Capabilities": {"KubeVersion": {"Version": "v1.30.0"}},
    }
    renderer = Renderer(defines)
    out = {}
    for name, nodes in parsed.items():
        if name.startswith("_"):
            continue
        data = dict(top, Template={"Name": f"chat/templates/{name}", "BasePath": "chat/templates"})
        out[name] = renderer.render_nodes(nodes, data, [{"$": data}])
    return out


# ---------------------------------------------------------------------------
# CRD schema -> JSON Schema, CEL equivalents
# ---------------------------------------------------------------------------


def crd_to_json_schema(node, strict: bool = True):
    """openAPIV3Schema -> JSON Schema: x-kubernetes-* dropped, nullable as
    null allowed, int-or-string as integer|string, int32/int64 bounds.
    strict: objects with `properties` reject unknown fields, like kubectl's
    strict field validation (the API server otherwise prunes them)."""
    if isinstance(node, list):
        return [crd_to_json_schema(x, strict) for x in node]
    if not isinstance(node, dict):
        return node
    out = {}
    for k, v in node.items():
        if k.startswith("x-kubernetes-") or k == "nullable":
            continue
        if k in ("properties",):
            out[k] = {name: crd_to_json_schema(s, strict) for name, s in v.items()}
        elif k in ("items", "additionalProperties", "not"):
            out[k] = crd_to_json_schema(v, strict) if isinstance(v, dict) else v
        elif k in ("allOf", "anyOf", "oneOf"):
            out[k] = crd_to_json_schema(v, strict)
        elif k == "description":
            continue
        else:
            out[k] = v
    if node.get("x-kubernetes-int-or-string"):
        out["type"] = ["integer", "string"]
    fmt = node.get("format")
    if out.get("type") == "integer" and fmt in ("int32", "int64"):
        bits = 31 if fmt == "int32" else 63
        out.setdefault("minimum", -(2 ** bits))
        out.setdefault("maximum", 2 ** bits - 1)
    if strict and "properties" in out and "additionalProperties" not in out \
            and not node.get("x-kubernetes-preserve-unknown-fields"):
        out["additionalProperties"] = False
    if node.get("nullable") and "type" in out:
        t = out["type"]
        out["type"] = (t if isinstance(t, list) else [t]) + ["null"]
    return out


def chatcluster_schema(crd: dict) -> dict:
    version = next(v for v in crd["spec"]["versions"] if v.get("storage"))
    schema = crd_to_json_schema(version["schema"]["openAPIV3Schema"])
    group = crd["spec"]["group"]
    schema["properties"]["apiVersion"] = {"const": f"{group}/{version['name']}"}
    schema["properties"]["kind"] = {"const": crd["spec"]["names"]["kind"]}
    schema["properties"]["metadata"] = {
        "type": "object",
        "required": ["name"],
        "properties": {
            "name": {"type": "string", "pattern": r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", "maxLength": 63},
            "namespace": {"type": "string"},
            "labels": {"type": "object", "additionalProperties": {"type": "string"}},
            "annotations": {"type": "object", "additionalProperties": {"type": "string"}},
        },
    }
    schema["required"] = sorted(set(schema.get("required", [])) | {"apiVersion", "kind", "metadata"})
    schema["$schema"] = "http://json-schema.org/draft-07/schema#"
    return schema


CEL_NOT_VERIFIED = "checked by this script's Python copy of the CRD's CEL rules, not by a CEL engine"

# The CRD's CEL rules and their Python equivalents. CEL's has() tests that a
# field is present; an evaluation error (a field missing) rejects the object,
# as the API server does.
CEL_RULES = {
    "!has(self.autoscaling) || !self.autoscaling.enabled || self.autoscaling.minReplicas <= self.autoscaling.maxReplicas":
        ("spec", lambda s: "autoscaling" not in s or not s["autoscaling"]["enabled"]
         or s["autoscaling"]["minReplicas"] <= s["autoscaling"]["maxReplicas"]),
    "has(self.urls) != has(self.secretKeyRef)":
        ("spec.redis", lambda r: ("urls" in r) != ("secretKeyRef" in r)),
}


def cel_rules_in(node, path="") -> list[tuple[str, str]]:
    found = []
    if isinstance(node, dict):
        for rule in node.get("x-kubernetes-validations", []) or []:
            found.append((path, rule["rule"]))
        for name, sub in (node.get("properties") or {}).items():
            found += cel_rules_in(sub, f"{path}.{name}" if path else name)
        if isinstance(node.get("items"), dict):
            found += cel_rules_in(node["items"], path + "[]")
    return found


def cel_violations(obj: dict) -> list[str]:
    bad = []
    for rule, (path, fn) in CEL_RULES.items():
        target = obj
        for part in path.split("."):
            target = target.get(part) if isinstance(target, dict) else None
        if target is None:
            continue
        try:
            ok = fn(target)
        except (KeyError, TypeError):
            ok = False
        if not ok:
            bad.append(rule)
    return bad


def schema_errors(validator, obj) -> list[str]:
    return [f"{'/'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}" for e in validator.iter_errors(obj)]


# ---------------------------------------------------------------------------
# checks
# ---------------------------------------------------------------------------


def check_values(r: Report) -> dict:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    semver = re.compile(r"^\d+\.\d+\.\d+(-[0-9A-Za-z.-]+)?$")
    r.check("Chart.yaml: apiVersion v2, name chat, semver version and appVersion",
            chart.get("apiVersion") == "v2" and chart.get("name") == "chat"
            and bool(semver.match(str(chart.get("version")))) and bool(semver.match(str(chart.get("appVersion")))),
            str(chart))
    schema = json.loads((CHART / "values.schema.json").read_text())
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    try:
        jsonschema.Draft7Validator.check_schema(schema)
        r.check("values.schema.json is a valid draft-07 schema", True)
    except jsonschema.SchemaError as err:
        r.check("values.schema.json is a valid draft-07 schema", False, err.message)
    v = jsonschema.Draft7Validator(schema)
    errs = schema_errors(v, values)
    r.check("values.yaml validates against values.schema.json", not errs, "; ".join(errs))

    # every leaf of values.yaml is described by the schema
    def undocumented(vals, sch, path=""):
        missing = []
        if isinstance(vals, dict):
            props = sch.get("properties", {})
            for k, x in vals.items():
                if k not in props:
                    missing.append(f"{path}{k}")
                else:
                    sub = props[k]
                    if "$ref" in sub:
                        continue
                    missing += undocumented(x, sub, f"{path}{k}.")
        return missing

    missing = undocumented(values, schema)
    r.check("every value in values.yaml has a schema entry", not missing, ", ".join(missing))

    bad_sets = {
        "redis.mode=external without urls": {"redis": {"mode": "external"}},
        "redis.mode=sentinel": {"redis": {"mode": "sentinel"}},
        "a redis url without scheme": {"redis": {"mode": "external", "external": {"urls": ["10.0.0.1:6379"]}}},
        "bundled redis with 3 nodes": {"redis": {"bundled": {"replicas": 3}}},
        "chatCluster.port 70000": {"chatCluster": {"port": 70000}},
        "negative api.replicas": {"api": {"replicas": -1}},
        "an unknown top-level value": {"apiServer": {}},
        "a misspelt nested value": {"api": {"devToken": True}},
        "api.devTokens as a string": {"api": {"devTokens": "yes"}},
        "pullPolicy Sometimes": {"operator": {"image": {"pullPolicy": "Sometimes"}}},
        "watchNamespace with capitals": {"operator": {"watchNamespace": "Chat"}},
        "resource quantity 1 GB": {"api": {"resources": {"limits": {"memory": "1 GB"}}}},
        "a chat server env var the operator sets": {"chatCluster": {"env": [{"name": "CHAT_LOG_FORMAT",
                                                                            "value": "text"}]}},
    }
    for name, over in bad_sets.items():
        errs = schema_errors(v, deep_merge(values, over))
        r.check(f"values schema rejects {name}", bool(errs))
    good_sets = {
        "external redis": {"redis": {"mode": "external", "external": {"urls": ["redis://r-0.r:6379", "rediss://r-1.r:6380"]}}},
        "ingress with tls": {"api": {"ingress": {"enabled": True, "className": "nginx", "host": "chat.example.org",
                                                  "tls": [{"secretName": "chat-tls"}]}}},
        "all namespaces": {"operator": {"watchNamespace": "*"}},
    }
    for name, over in good_sets.items():
        errs = schema_errors(v, deep_merge(values, over))
        r.check(f"values schema accepts {name}", not errs, "; ".join(errs))
    return values


def check_template_syntax(r: Report) -> None:
    tdir = CHART / "templates"
    files = sorted(p for p in tdir.iterdir() if p.is_file())
    r.check("charts/chat/templates has templates", len(files) > 3)
    for path in files:
        text = path.read_text()
        name = f"templates/{path.name}"
        problems = []
        if "\t" in text:
            problems.append("tab character (line %d)" % (text[: text.index("\t")].count("\n") + 1))
        opens, closes = text.count("{{"), text.count("}}")
        if opens != closes:
            problems.append(f"{opens} '{{{{' but {closes} '}}}}'")
        # actions never nest: after every {{ comes a }} before the next {{
        depth = 0
        for m in re.finditer(r"\{\{|\}\}", text):
            depth += 1 if m.group() == "{{" else -1
            if depth not in (0, 1):
                problems.append(f"nested or stray braces at line {text[: m.start()].count(chr(10)) + 1}")
                break
        # block openers versus end, comments ignored
        stack: list[str] = []
        for m in ACTION_RE.finditer(text):
            body = m.group(2).strip()
            if body.startswith("/*"):
                if not body.endswith("*/"):
                    problems.append("unterminated comment")
                continue
            word = (body.split() or [""])[0]
            line = text[: m.start()].count("\n") + 1
            if word in BLOCK_KEYWORDS:
                stack.append(f"{word} (line {line})")
            elif word == "end":
                if not stack:
                    problems.append(f"'end' without a block at line {line}")
                else:
                    stack.pop()
            elif word == "else" and not stack:
                problems.append(f"'else' outside a block at line {line}")
        if stack:
            problems.append("unclosed: " + ", ".join(stack))
        if "{{" not in text and path.suffix in (".yaml", ".yml"):
            try:
                list(yaml.safe_load_all(text))
            except yaml.YAMLError as err:
                problems.append(f"not YAML: {err}")
        r.check(f"{name} is well formed", not problems, "; ".join(problems))


def check_crd_copy(r: Report) -> dict:
    a, b = CRD_PATH.read_bytes(), (CHART / "crds" / "chatcluster.yaml").read_bytes()
    r.check("charts/chat/crds/chatcluster.yaml is byte-identical to crds/chatcluster.yaml", a == b,
            "run: cp crds/chatcluster.yaml charts/chat/crds/chatcluster.yaml")
    crd = yaml.safe_load(a)
    r.check("the CRD is chatclusters.chat.scalechat.dev with a scale subresource",
            crd.get("metadata", {}).get("name") == "chatclusters.chat.scalechat.dev"
            and all("scale" in v.get("subresources", {}) for v in crd["spec"]["versions"]))
    return crd


def check_chatclusters(r: Report, crd: dict) -> None:
    schema = chatcluster_schema(crd)
    jsonschema.Draft7Validator.check_schema(schema)
    v = jsonschema.Draft7Validator(schema)

    rules = cel_rules_in(crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"])
    unknown = [f"{p}: {rule}" for p, rule in rules if rule not in CEL_RULES or CEL_RULES[rule][0] != p]
    r.check("every CEL rule of the CRD has a Python equivalent here", not unknown and len(rules) == len(CEL_RULES),
            "new or changed rules: " + "; ".join(unknown) if unknown else f"{len(rules)} rules, {len(CEL_RULES)} known")

    example = yaml.safe_load((ROOT / "examples" / "chatcluster.yaml").read_text())
    errs = schema_errors(v, example)
    r.check("examples/chatcluster.yaml validates against the CRD schema", not errs, "; ".join(errs))
    r.check_without_engine("examples/chatcluster.yaml passes the CEL rules", not cel_violations(example),
                           CEL_NOT_VERIFIED, "; ".join(cel_violations(example)))

    default_cc = yaml.safe_load((CHART / "ci" / "default-chatcluster.yaml").read_text())
    errs = schema_errors(v, default_cc)
    r.check("charts/chat/ci/default-chatcluster.yaml validates against the CRD schema", not errs, "; ".join(errs))
    r.check_without_engine("charts/chat/ci/default-chatcluster.yaml passes the CEL rules",
                           not cel_violations(default_cc), CEL_NOT_VERIFIED)

    def variant(mutate):
        obj = copy.deepcopy(example)
        mutate(obj["spec"])
        return obj

    schema_bad = {
        "negative replicas": lambda s: s.update(replicas=-1),
        "port 70000": lambda s: s.update(port=70000),
        "missing image": lambda s: s.pop("image"),
        "missing secretName": lambda s: s.pop("secretName"),
        "replicas as a string": lambda s: s.update(replicas="2"),
        "drainTimeoutSeconds 7200": lambda s: s.update(drainTimeoutSeconds=7200),
        "targetConnectionsPerPod 0": lambda s: s["autoscaling"].update(targetConnectionsPerPod=0),
        "an unknown spec field (strict field validation)": lambda s: s.update(replica=3),
    }
    for name, mutate in schema_bad.items():
        r.check(f"CRD schema rejects a ChatCluster with {name}", bool(schema_errors(v, variant(mutate))))

    def no_redis(s):
        s["redis"] = {}

    def both_redis(s):
        s["redis"]["secretKeyRef"] = {"name": "redis", "key": "urls"}

    def secret_only(s):
        s["redis"] = {"secretKeyRef": {"name": "redis", "key": "urls"}}

    cel_cases = {
        "minReplicas > maxReplicas": (lambda s: s["autoscaling"].update(minReplicas=5, maxReplicas=3), True),
        "minReplicas > maxReplicas with autoscaling off": (
            lambda s: s["autoscaling"].update(enabled=False, minReplicas=5, maxReplicas=3), False),
        "no autoscaling block": (lambda s: s.pop("autoscaling"), False),
        "minReplicas == maxReplicas": (lambda s: s["autoscaling"].update(minReplicas=3, maxReplicas=3), False),
        "neither redis.urls nor redis.secretKeyRef": (no_redis, True),
        "both redis.urls and redis.secretKeyRef": (both_redis, True),
        "only redis.secretKeyRef": (secret_only, False),
    }
    for name, (mutate, rejected) in cel_cases.items():
        obj = variant(mutate)
        errs = schema_errors(v, obj)
        violations = cel_violations(obj)
        if rejected:
            r.check_without_engine(f"CEL rule rejects {name}", bool(violations) and not errs, CEL_NOT_VERIFIED,
                                   f"schema errors {errs}" if errs else "accepted")
        else:
            r.check_without_engine(f"CEL rules accept {name}", not violations and not errs, CEL_NOT_VERIFIED,
                                   "; ".join(violations + errs))


def docs_of(rendered: dict[str, str]) -> list[tuple[str, dict]]:
    out = []
    for name, text in rendered.items():
        if name.endswith(".txt"):
            continue
        for doc in yaml.safe_load_all(text):
            if doc is not None:
                out.append((name, doc))
    return out


def pod_spec(doc: dict):
    if doc.get("kind") in ("Deployment", "StatefulSet", "Job"):
        return doc["spec"]["template"]["spec"]
    return None


def security_problems(doc: dict) -> list[str]:
    spec = pod_spec(doc)
    problems = []
    psc = spec.get("securityContext") or {}
    if psc.get("runAsNonRoot") is not True or psc.get("runAsUser") != 65532 \
            or (psc.get("seccompProfile") or {}).get("type") != "RuntimeDefault":
        problems.append("pod securityContext")
    for c in spec.get("initContainers", []) + spec["containers"]:
        sc = c.get("securityContext") or {}
        if not (sc.get("readOnlyRootFilesystem") is True and sc.get("allowPrivilegeEscalation") is False
                and sc.get("runAsNonRoot") is True and "ALL" in (sc.get("capabilities") or {}).get("drop", [])):
            problems.append(f"container {c['name']} securityContext")
        if not (c.get("resources") or {}).get("requests"):
            problems.append(f"container {c['name']} has no resource requests")
    return problems


def env_of(doc: dict, container: int = 0) -> dict:
    return {e["name"]: e for e in pod_spec(doc)["containers"][container].get("env", [])}


def check_rendering(r: Report, values: dict, crd: dict) -> None:
    v = jsonschema.Draft7Validator(chatcluster_schema(crd))
    try:
        rendered = render_chart(values)
        r.check("chart renders with the default values (mini Go-template renderer)", True)
    except (TemplateError, HelmFail) as err:
        r.check("chart renders with the default values (mini Go-template renderer)", False, str(err))
        return
    try:
        docs = docs_of(rendered)
        r.check("every rendered manifest parses as YAML", True)
    except yaml.YAMLError as err:
        r.check("every rendered manifest parses as YAML", False, str(err))
        return
    kinds = sorted(f"{d['kind']}/{d['metadata']['name']}" for _, d in docs)
    expected = {
        "ChatCluster/chat", "ConfigMap/chat-redis", "Deployment/chat-api", "Deployment/chat-operator",
        "Job/chat-redis-cluster-init", "PodDisruptionBudget/chat-api", "Role/chat-operator",
        "Role/chat-operator-leader-election", "RoleBinding/chat-operator", "RoleBinding/chat-operator-leader-election",
        "Secret/chat-secrets", "Service/chat-api", "Service/chat-operator-metrics", "Service/chat-redis",
        "ServiceAccount/chat-operator", "StatefulSet/chat-redis",
    }
    r.check("default render has exactly the expected objects", set(kinds) == expected and len(kinds) == len(expected),
            f"got {kinds}")
    shape = [f"{n}: {d.get('kind')}" for n, d in docs
             if not (d.get("apiVersion") and d.get("kind") and d.get("metadata", {}).get("name"))]
    r.check("every rendered object has apiVersion, kind and metadata.name", not shape, "; ".join(shape))
    by = {f"{d['kind']}/{d['metadata']['name']}": d for _, d in docs}

    pods = [k for k, d in by.items() if pod_spec(d) is not None]
    for k in pods:
        problems = security_problems(by[k])
        r.check(f"{k}: non-root, read-only, no privilege escalation, caps dropped, resources", not problems,
                "; ".join(problems))

    cc = by.get("ChatCluster/chat")
    ci = yaml.safe_load((CHART / "ci" / "default-chatcluster.yaml").read_text())
    r.check("rendered ChatCluster equals charts/chat/ci/default-chatcluster.yaml", cc == ci,
            f"rendered: {json.dumps(cc, sort_keys=True)}")
    errs = schema_errors(v, cc) if cc else ["missing"]
    r.check("rendered ChatCluster validates against the CRD schema", not errs, "; ".join(errs))

    api_env = env_of(by["Deployment/chat-api"])
    want = {"CHAT_API_LISTEN": "0.0.0.0:8080", "CHAT_DEV_TOKENS": "false", "CHAT_REQUIRE_REGISTRATION": "true",
            "CHAT_LOG_FORMAT": "json"}
    wrong = [k for k, val in want.items() if api_env.get(k, {}).get("value") != val]
    for env, key in (("CHAT_JWT_SECRET", "jwtSecret"), ("CHAT_TICKET_SECRET", "ticketSecret"),
                     ("CHAT_INTERNAL_SECRET", "internalSecret")):
        ref = api_env.get(env, {}).get("valueFrom", {}).get("secretKeyRef", {})
        if ref != {"name": "chat-secrets", "key": key}:
            wrong.append(env)
    urls = api_env.get("CHAT_REDIS_URLS", {}).get("value", "")
    if urls != ",".join(ci["spec"]["redis"]["urls"]):
        wrong.append("CHAT_REDIS_URLS differs from the ChatCluster's redis.urls")
    r.check("API server environment (listen, secrets, redis, dev tokens, registration)", not wrong, ", ".join(wrong))

    op = by["Deployment/chat-operator"]
    op_env = env_of(op)
    wrong = [k for k in ("CHAT_OPERATOR_LISTEN", "POD_NAME", "POD_NAMESPACE", "CHAT_REDIS_URLS", "CHAT_INTERNAL_SECRET")
             if k not in op_env]
    if op_env.get("POD_NAME", {}).get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") != "metadata.name":
        wrong.append("POD_NAME from the downward API")
    if op_env.get("CHAT_REDIS_URLS", {}).get("value") != urls:
        wrong.append("CHAT_REDIS_URLS differs from the API's")
    container = op["spec"]["template"]["spec"]["containers"][0]
    if op_env.get("CHAT_OPERATOR_LEADER_ELECTION", {}).get("value") != "true" or \
            op_env.get("CHAT_OPERATOR_LEASE", {}).get("value") != "chat-operator":
        wrong.append("leader election env")
    if op_env.get("CHAT_OPERATOR_NAMESPACE", {}).get("value") != "chat":
        wrong.append("CHAT_OPERATOR_NAMESPACE (the release namespace)")
    if container.get("args"):
        wrong.append("unexpected args (the operator is configured through its environment)")
    if container["livenessProbe"]["httpGet"]["path"] != "/healthz" or \
            container["readinessProbe"]["httpGet"]["path"] != "/readyz":
        wrong.append("probes")
    r.check("operator Deployment (env, downward API, leader election, namespace, probes)", not wrong,
            ", ".join(wrong))

    role = by["Role/chat-operator"]
    grants = {(g, res, verb) for rule in role["rules"] for g in rule["apiGroups"] for res in rule["resources"]
              for verb in rule["verbs"]}
    needed = {("chat.scalechat.dev", "chatclusters", "patch"), ("chat.scalechat.dev", "chatclusters/status", "patch"),
              ("chat.scalechat.dev", "chatclusters/finalizers", "update"), ("apps", "statefulsets", "delete"),
              ("", "services", "create"), ("policy", "poddisruptionbudgets", "create"), ("", "pods", "watch"), ("", "pods", "delete"),
              ("", "events", "create"), ("events.k8s.io", "events", "create")}
    excess = [g for g in grants if g[1] in ("secrets", "*") or g[2] == "*" or g[0] == "*"]
    r.check("operator Role grants what the operator needs and no wildcard or Secret access",
            needed <= grants and not excess, f"missing {sorted(needed - grants)} excess {excess}")
    lease_rules = by["Role/chat-operator-leader-election"]["rules"]
    lease_grants = {(verb, tuple(rule.get("resourceNames", []))) for rule in lease_rules for verb in rule["verbs"]
                    if rule["apiGroups"] == ["coordination.k8s.io"] and rule["resources"] == ["leases"]}
    r.check("leader-election Role: leases create, and get/update/patch of this release's Lease only",
            lease_grants == {("create", ()), ("get", ("chat-operator",)), ("update", ("chat-operator",)),
                             ("patch", ("chat-operator",))} and len(lease_rules) == 2, str(lease_rules))

    secret = by["Secret/chat-secrets"]
    lens = {k: len(base64.b64decode(x)) for k, x in secret.get("data", {}).items()}
    r.check("Secret has jwtSecret, ticketSecret, internalSecret of 32 characters",
            lens == {"jwtSecret": 32, "ticketSecret": 32, "internalSecret": 32}, str(lens))

    sts = by["StatefulSet/chat-redis"]
    args = sts["spec"]["template"]["spec"]["containers"][0]["args"]
    conf = by["ConfigMap/chat-redis"]["data"]["redis.conf"]
    r.check("bundled Redis: 6 pods, cluster-enabled, node timeout 2000, appendonly, /data volume",
            sts["spec"]["replicas"] == 6 and "cluster-enabled yes" in conf and "cluster-node-timeout 2000" in conf
            and "appendonly yes" in conf and args[0] == "/conf/redis.conf"
            and any(m["mountPath"] == "/data" for m in sts["spec"]["template"]["spec"]["containers"][0]["volumeMounts"]))
    job = by["Job/chat-redis-cluster-init"]
    script = job["spec"]["template"]["spec"]["containers"][0]["command"][-1]
    r.check("cluster-init Job is a plain Job (not a hook, so --wait works) running redis-cli --cluster create once",
            "helm.sh/hook" not in (job["metadata"].get("annotations") or {})
            and job["spec"].get("ttlSecondsAfterFinished") == 600
            and "--cluster create" in script and "--cluster-replicas 1" in script and "cluster_state" in script)
    if shutil.which("shellcheck"):
        proc = subprocess.run(["shellcheck", "-s", "sh", "-"], input=script, text=True, capture_output=True)
        r.check("cluster-init Job script passes shellcheck (sh)", proc.returncode == 0, proc.stdout[-2000:])
    else:
        r.unverified("cluster-init Job script passes shellcheck (sh)", "shellcheck is not installed, not run")
    r.check("NOTES.txt renders and mentions /v1/connect", "/v1/connect" in rendered.get("NOTES.txt", ""))

    # other value sets
    variants = {
        "external Redis, API HPA and ingress, dev tokens, existing Secret, all namespaces": {
            "redis": {"mode": "external", "external": {"urls": ["redis://r-0.r:6379", "redis://r-1.r:6379"]}},
            "api": {"devTokens": True, "autoscaling": {"enabled": True, "minReplicas": 3},
                    "ingress": {"enabled": True, "className": "nginx", "tls": [{"secretName": "chat-tls"}]}},
            "secrets": {"existingSecret": "my-secrets"},
            "operator": {"watchNamespace": "*"},
            "chatCluster": {"autoscaling": {"enabled": True, "targetConnectionsPerPod": 1000000},
                            "publicUrlTemplate": "wss://chat.example.com/{pod}/ws"},
        },
        "one API replica, no ChatCluster, no leader election, emptyDir Redis": {
            "api": {"replicas": 1},
            "chatCluster": {"enabled": False},
            "operator": {"leaderElection": False},
            "redis": {"bundled": {"persistence": {"enabled": False}}},
        },
    }
    for name, over in variants.items():
        vals = deep_merge(values, over)
        errs = schema_errors(jsonschema.Draft7Validator(json.loads((CHART / "values.schema.json").read_text())), vals)
        try:
            docs = docs_of(render_chart(vals, release="prod", namespace="apps"))
        except (TemplateError, HelmFail, yaml.YAMLError) as err:
            r.check(f"renders: {name}", False, str(err))
            continue
        by = {f"{d['kind']}/{d['metadata']['name']}": d for _, d in docs}
        problems = list(errs)
        for k, d in by.items():
            if pod_spec(d) is not None:
                problems += [f"{k}: {p}" for p in security_problems(d)]
        if "redis" in over and over["redis"].get("mode") == "external":
            if any(k.endswith("-redis") or "redis-cluster-init" in k for k in by):
                problems.append("bundled Redis objects rendered in external mode")
            if "Secret/prod-chat-secrets" in by:
                problems.append("Secret rendered despite existingSecret")
            if not {"ClusterRole/apps-prod-chat-operator", "ClusterRoleBinding/apps-prod-chat-operator",
                    "HorizontalPodAutoscaler/prod-chat-api", "Ingress/prod-chat-api"} <= set(by):
                problems.append(f"missing cluster RBAC, HPA or Ingress: {sorted(by)}")
            if "CHAT_OPERATOR_NAMESPACE" in env_of(by["Deployment/prod-chat-operator"]):
                problems.append("CHAT_OPERATOR_NAMESPACE set although watchNamespace is *")
            if "replicas" in by["Deployment/prod-chat-api"]["spec"]:
                problems.append("API Deployment sets replicas although the HPA owns them")
            cc = by["ChatCluster/prod-chat"]
            problems += schema_errors(v, cc) + cel_violations(cc)
            if cc["spec"]["secretName"] != "my-secrets" or cc["spec"]["redis"]["urls"] != ["redis://r-0.r:6379",
                                                                                             "redis://r-1.r:6379"]:
                problems.append("ChatCluster secretName/redis.urls do not follow the values")
            if cc["spec"]["autoscaling"]["targetConnectionsPerPod"] != 1000000:
                problems.append("large numbers must render as integers, not 1e+06")
            api_env = env_of(by["Deployment/prod-chat-api"])
            if api_env["CHAT_DEV_TOKENS"]["value"] != "true" or \
                    api_env["CHAT_JWT_SECRET"]["valueFrom"]["secretKeyRef"]["name"] != "my-secrets":
                problems.append("API env does not follow devTokens/existingSecret")
            ing = by["Ingress/prod-chat-api"]["spec"]
            if ing["tls"][0]["hosts"] != ["chat.example.com"]:
                problems.append("ingress tls hosts default to [host]")
        else:
            if "PodDisruptionBudget/prod-chat-api" in by:
                problems.append("PDB rendered for a single API replica")
            if any(k.startswith("ChatCluster/") for k in by):
                problems.append("ChatCluster rendered although disabled")
            if "Role/prod-chat-operator-leader-election" in by or \
                    env_of(by["Deployment/prod-chat-operator"])["CHAT_OPERATOR_LEADER_ELECTION"]["value"] != "false":
                problems.append("leader election Role rendered or not turned off although disabled")
            if env_of(by["Deployment/prod-chat-operator"])["CHAT_OPERATOR_NAMESPACE"]["value"] != "apps":
                problems.append("CHAT_OPERATOR_NAMESPACE is not the release namespace")
            vols = by["StatefulSet/prod-chat-redis"]["spec"]["template"]["spec"]["volumes"]
            if not any(x["name"] == "data" and "emptyDir" in x for x in vols):
                problems.append("no emptyDir data volume without persistence")
        r.check(f"renders: {name}", not problems, "; ".join(map(str, problems)))

    must_fail = {
        "two operators without leader election": {"operator": {"replicas": 2, "leaderElection": False}},
        "external Redis without urls (schema bypassed)": {"redis": {"mode": "external"}},
        "ChatCluster minReplicas > maxReplicas": {"chatCluster": {"autoscaling": {"enabled": True, "minReplicas": 5,
                                                                                 "maxReplicas": 2}}},
    }
    for name, over in must_fail.items():
        try:
            render_chart(deep_merge(values, over))
            r.check(f"chart refuses {name}", False, "rendered without error")
        except HelmFail:
            r.check(f"chart refuses {name}", True)
        except TemplateError as err:
            r.check(f"chart refuses {name}", False, f"template error instead of fail: {err}")


def main() -> int:
    r = Report()
    steps = [
        ("values", lambda: check_values(r)),
        ("templates", lambda: check_template_syntax(r)),
        ("crd", lambda: check_crd_copy(r)),
    ]
    results = {}
    for name, step in steps:
        try:
            results[name] = step()
        except Exception:  # a crash in one section is a failure, not a traceback exit
            r.check(f"{name} checks ran", False, traceback.format_exc())
    crd = results.get("crd")
    if crd is not None:
        for name, step in (("chatclusters", lambda: check_chatclusters(r, crd)),
                           ("rendering", lambda: check_rendering(r, results.get("values") or {}, crd))):
            try:
                step()
            except Exception:
                r.check(f"{name} checks ran", False, traceback.format_exc())
    print(f"{r.passed} passed, {r.failed} failed, {r.not_verified} not verified")
    return 1 if r.failed else 0


if __name__ == "__main__":
    sys.exit(main())
