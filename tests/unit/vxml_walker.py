"""A small, generic VoiceXML 2.1 walker for tests: it plays the part of an IVR platform, fetching
documents over HTTP, running their forms with scripted DTMF input and recording what would be spoken.

It knows nothing of any particular dialog. Supported: ``<form>`` (with a simplified form
interpretation algorithm), ``<block>``, ``<field>`` (builtin ``digits``/``boolean`` types, builtin DTMF
grammars by ``src``, inline SRGS DTMF grammars, ``<option>``), ``<menu>``/``<choice>``, ``<prompt>`` and
``<audio>`` text with ``<value>``, ``<filled>``, ``<if>``/``<elseif>``/``<else>``, ``<var>``,
``<assign>``, ``<clear>``, ``<goto>``, ``<submit>``, ``<nomatch>``/``<noinput>`` with ``<reprompt>``,
``<exit>`` and ``<disconnect>``. Expressions are a small ECMAScript subset: literals, variables,
``+``, comparisons, ``&&``, ``||``, ``!`` and parentheses.

``check_vxml`` checks a document is well-formed VoiceXML 2.1: root, namespace, version, element names
and required attributes.
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urljoin

from lxml import etree

VXML_NS = "http://www.w3.org/2001/vxml"
CONTENT_TYPE = "application/voicexml+xml"
_Q = "{" + VXML_NS + "}"

# VoiceXML 2.1 elements, with the SSML 1.0 and SRGS 1.0 elements that may appear inline (in the
# VoiceXML namespace) inside prompts and grammars.
VXML_ELEMENTS = frozenset(
    [
        "assign",
        "audio",
        "block",
        "catch",
        "choice",
        "clear",
        "data",
        "disconnect",
        "else",
        "elseif",
        "enumerate",
        "error",
        "exit",
        "field",
        "filled",
        "foreach",
        "form",
        "goto",
        "grammar",
        "help",
        "if",
        "initial",
        "link",
        "log",
        "mark",
        "menu",
        "meta",
        "metadata",
        "noinput",
        "nomatch",
        "object",
        "option",
        "param",
        "prompt",
        "property",
        "record",
        "reprompt",
        "return",
        "script",
        "subdialog",
        "submit",
        "throw",
        "transfer",
        "value",
        "var",
        "vxml",
    ]
)
SSML_ELEMENTS = frozenset(
    ["break", "desc", "emphasis", "lexicon", "p", "phoneme", "prosody", "say-as", "sub", "s", "voice"]
)
SRGS_ELEMENTS = frozenset(["item", "one-of", "rule", "ruleref", "tag", "token", "example"])
_REQUIRED: dict[str, tuple[tuple[str, ...], ...]] = {
    # element: groups of attributes, one of each group required
    "vxml": (("version",),),
    "assign": (("name",), ("expr",)),
    "var": (("name",),),
    "value": (("expr",),),
    "if": (("cond",),),
    "elseif": (("cond",),),
    "goto": (("next", "expr", "nextitem", "expritem"),),
    "submit": (("next", "expr"),),
    "choice": (("next", "expr", "event", "eventexpr"),),
    "rule": (("id",),),
    "ruleref": (("uri", "special"),),
    "throw": (("event", "eventexpr"),),
    "param": (("name",),),
    "say-as": (("interpret-as",),),
}


_DTMF = re.compile(r"[0-9*#]+( [0-9*#]+)*")


def check_vxml(body: bytes) -> list[str]:
    """Every way ``body`` is not a well-formed VoiceXML 2.1 document; empty when it is one."""
    parser = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False)
    try:
        root = etree.fromstring(body, parser)
    except etree.XMLSyntaxError as exc:
        return [f"not well-formed XML: {exc}"]
    problems = []
    if root.tag != _Q + "vxml":
        problems.append(f"root element is {root.tag}, not {{{VXML_NS}}}vxml")
    if root.get("version") != "2.1":
        problems.append(f"version is {root.get('version')!r}, not '2.1'")
    for el in root.iter():
        if not isinstance(el.tag, str):
            continue  # comments and processing instructions
        if not el.tag.startswith(_Q):
            problems.append(f"element {el.tag} is outside the VoiceXML namespace")
            continue
        name = el.tag[len(_Q) :]
        if name not in VXML_ELEMENTS | SSML_ELEMENTS | SRGS_ELEMENTS:
            problems.append(f"<{name}> is not a VoiceXML 2.1 element")
        for group in _REQUIRED.get(name, ()):
            if not any(el.get(a) is not None for a in group):
                problems.append(f"<{name}> (line {el.sourceline}) needs {' or '.join(group)}")
        if name == "submit" and el.get("method", "get").lower() not in ("get", "post"):
            problems.append(f"<submit> (line {el.sourceline}) method must be get or post")
        if (
            name in ("option", "choice")
            and el.get("dtmf") is not None
            and not _DTMF.fullmatch(el.get("dtmf"))
        ):
            problems.append(f"<{name}> (line {el.sourceline}) dtmf {el.get('dtmf')!r} is not keys 0-9 * #")
        if name == "grammar" and el.get("src") is None and len(el) == 0:
            problems.append(f"<grammar> (line {el.sourceline}) has neither src nor an inline rule")
    return problems


# -- expressions -----------------------------------------------------------------------------------

_TOKEN = re.compile(
    r"\s*(?:(?P<num>\d+(?:\.\d+)?)|(?P<str>'(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\")"
    r"|(?P<op>===|!==|==|!=|<=|>=|&&|\|\||[-+<>!()])|(?P<name>[A-Za-z_$][\w$.]*))"
)


class Undefined:
    def __repr__(self) -> str:
        return "undefined"


UNDEFINED = Undefined()


def _tokens(text: str) -> list[tuple[str, str]]:
    out, pos = [], 0
    text = text.rstrip()
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if not m or m.end() == pos:
            raise ValueError(f"cannot read expression {text!r} at {pos}")
        kind = m.lastgroup
        assert kind is not None
        out.append((kind, m.group(kind)))
        pos = m.end()
    return out


def _string(literal: str) -> str:
    if literal[0] == '"':
        return str(json.loads(literal))
    return str(json.loads('"' + literal[1:-1].replace('"', '\\"').replace("\\'", "'") + '"'))


def _truthy(value: Any) -> bool:
    return value not in (None, UNDEFINED, False, 0, "")


def _js_str(value: Any) -> str:
    if value is True or value is False:
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def evaluate(expr: str, scope: dict[str, Any]) -> Any:
    """Evaluate a small ECMAScript expression against ``scope``."""
    tokens = _tokens(expr)
    pos = 0

    def peek() -> str | None:
        return tokens[pos][1] if pos < len(tokens) and tokens[pos][0] == "op" else None

    def take() -> tuple[str, str]:
        nonlocal pos
        pos += 1
        return tokens[pos - 1]

    def primary() -> Any:
        if pos >= len(tokens):
            raise ValueError(f"expression {expr!r} ends early")
        kind, text = take()
        if kind == "num":
            return float(text) if "." in text else int(text)
        if kind == "str":
            return _string(text)
        if kind == "name":
            if text in ("true", "false"):
                return text == "true"
            if text in ("null", "undefined"):
                return None if text == "null" else UNDEFINED
            base, _, attr = text.partition(".")
            value = scope.get(base, UNDEFINED)
            if attr == "length" and isinstance(value, str):
                return len(value)
            if attr:
                raise ValueError(f"property access {text!r} is not supported")
            return value
        if text == "(":
            value = disjunction()
            if take()[1] != ")":
                raise ValueError(f"missing ) in {expr!r}")
            return value
        raise ValueError(f"unexpected {text!r} in {expr!r}")

    def unary() -> Any:
        if peek() == "!":
            take()
            return not _truthy(unary())
        if peek() == "-":
            take()
            return -unary()
        return primary()

    def additive() -> Any:
        value = unary()
        while peek() in ("+", "-"):
            op = take()[1]
            right = unary()
            if op == "+" and (isinstance(value, str) or isinstance(right, str)):
                value = _js_str(value) + _js_str(right)
            else:
                value = value + right if op == "+" else value - right
        return value

    def relational() -> Any:
        value = additive()
        while peek() in ("<", ">", "<=", ">="):
            op = take()[1]
            right = additive()
            value = {"<": value < right, ">": value > right, "<=": value <= right, ">=": value >= right}[op]
        return value

    def equality() -> Any:
        value = relational()
        while peek() in ("==", "!=", "===", "!=="):
            op = take()[1]
            right = relational()
            same = value == right
            if op in ("==", "!=") and isinstance(value, str) != isinstance(right, str):
                same = _js_str(value) == _js_str(right)  # loose equality between a string and a number
            value = same if op in ("==", "===") else not same
        return value

    def conjunction() -> Any:
        value = equality()
        while peek() == "&&":
            take()
            right = equality()
            value = right if _truthy(value) else value
        return value

    def disjunction() -> Any:
        value = conjunction()
        while peek() == "||":
            take()
            right = conjunction()
            value = value if _truthy(value) else right
        return value

    result = disjunction()
    if pos != len(tokens):
        raise ValueError(f"unexpected {tokens[pos][1]!r} in {expr!r}")
    return result


# -- grammars --------------------------------------------------------------------------------------


def _builtin(spec: str) -> re.Pattern[str]:
    """A builtin DTMF type such as ``digits?minlength=1;maxlength=4`` or ``boolean``."""
    name, _, params = spec.partition("?")
    args = dict(p.split("=", 1) for p in params.split(";") if "=" in p)
    if name == "digits":
        if "length" in args:
            low = high = args["length"]
        else:
            low, high = args.get("minlength", "1"), args.get("maxlength", "")
        return re.compile(rf"[0-9]{{{low},{high}}}")
    if name == "boolean":
        return re.compile("[12]")
    raise ValueError(f"builtin type {spec!r} is not supported")


def _srgs(grammar: Any) -> re.Pattern[str]:
    """An inline SRGS DTMF grammar as a regular expression over the keys pressed."""
    rules = {r.get("id"): r for r in grammar.iter(_Q + "rule")}
    root = grammar.get("root") or next(iter(rules))

    def item(el: Any) -> str:
        body = "(?:" + expansion(el) + ")"
        repeat = el.get("repeat")
        if repeat:
            low, _, high = repeat.partition("-")
            body += f"{{{low},{high}}}" if "-" in repeat else f"{{{low}}}"
        return body

    def expansion(el: Any) -> str:
        parts = []
        if el.text and el.text.strip():
            parts.extend(re.escape(t) for t in el.text.split())
        for child in el:
            name = child.tag[len(_Q) :] if isinstance(child.tag, str) else ""
            if name == "one-of":
                parts.append("(?:" + "|".join(item(i) for i in child.findall(_Q + "item")) + ")")
            elif name == "item":
                parts.append(item(child))
            elif name == "ruleref":
                parts.append("(?:" + expansion(rules[child.get("uri", "#")[1:]]) + ")")
            if child.tail and child.tail.strip():
                parts.extend(re.escape(t) for t in child.tail.split())
        return "".join(parts)

    return re.compile(expansion(rules[root]))


@dataclass
class _Grammar:
    pattern: re.Pattern[str]
    value: str | None = None  # an <option>'s value; else the keys themselves

    def match(self, keys: str) -> str | None:
        if self.pattern.fullmatch(keys):
            return keys if self.value is None else self.value
        return None


def _field_grammars(el: Any) -> list[_Grammar]:
    grammars = []
    if el.get("type"):
        grammars.append(_Grammar(_builtin(el.get("type"))))
    for g in el.findall(_Q + "grammar"):
        src = g.get("src")
        if src:
            if not src.startswith("builtin:dtmf/"):
                raise ValueError(f"grammar {src!r} is not supported")
            grammars.append(_Grammar(_builtin(src[len("builtin:dtmf/") :])))
        elif g.get("mode", "voice") == "dtmf":
            grammars.append(_Grammar(_srgs(g)))
    for option in el.findall(_Q + "option"):
        if option.get("dtmf"):
            text = (option.text or "").strip()
            grammars.append(_Grammar(re.compile(re.escape(option.get("dtmf"))), option.get("value") or text))
    return grammars


# -- the interpreter -------------------------------------------------------------------------------


class _Transition(Exception):
    def __init__(self, url: str | None, method: str = "get", data: dict[str, str] | None = None) -> None:
        self.url, self.method, self.data = url, method, data or {}


class _Goto(Exception):
    def __init__(self, form: str | None = None, item: str | None = None) -> None:
        self.form, self.item = form, item


class _End(Exception):
    def __init__(self, how: str) -> None:
        self.how = how


class _Reprompt(Exception):
    pass


class WalkError(AssertionError):
    pass


@dataclass
class Call:
    """What happened on one call: what was spoken, the documents fetched, and how it ended."""

    spoken: list[str] = field(default_factory=list)
    documents: list[tuple[str, bytes]] = field(default_factory=list)
    ended: str = ""

    @property
    def text(self) -> str:
        return "\n".join(self.spoken)

    def said(self, fragment: str) -> bool:
        return any(fragment.lower() in s.lower() for s in self.spoken)


class Walker:
    """Walks a VoiceXML dialog. ``client`` is anything with ``request(method, url, params=, data=)``
    returning a response with ``status_code``, ``headers`` and ``content`` (Starlette's TestClient,
    an httpx.Client with a base URL)."""

    def __init__(self, client: Any, *, strict: bool = True, max_steps: int = 500) -> None:
        self.client = client
        self.strict = strict
        self.max_steps = max_steps

    def call(self, url: str, keys: Iterable[str | None]) -> Call:
        """Dial ``url`` and answer each field or menu with the next entry of ``keys`` (a string of
        DTMF keys, a trailing ``#`` being the terminator; None for silence). When the keys run out
        the caller hangs up."""
        self._keys = list(keys)
        self._call = Call()
        self._steps = 0
        transition = _Transition(url)
        try:
            while True:
                root, url = self._fetch(transition, url)
                transition = self._run_document(root, url)
        except _End as end:
            self._call.ended = end.how
        return self._call

    # documents

    def _fetch(self, t: _Transition, base: str) -> tuple[Any, str]:
        target = urljoin(base, t.url or base)
        if t.method.lower() == "post":
            response = self.client.request("POST", target, data=t.data)
        else:
            response = self.client.request("GET", target, params=t.data or None)
        body = response.content
        self._call.documents.append((target, body))
        ctype = response.headers.get("content-type", "").split(";")[0].strip()
        if self.strict:
            if response.status_code != 200:
                raise WalkError(f"{target}: HTTP {response.status_code}: {body[:300]!r}")
            if ctype != CONTENT_TYPE:
                raise WalkError(f"{target}: content-type {ctype!r}, not {CONTENT_TYPE}")
            problems = check_vxml(body)
            if problems:
                raise WalkError(f"{target}: not VoiceXML 2.1: {problems}")
        parser = etree.XMLParser(resolve_entities=False, no_network=True)
        return etree.fromstring(body, parser), target

    def _run_document(self, root: Any, url: str) -> _Transition:
        scope: dict[str, Any] = {}
        for el in root:
            if el.tag == _Q + "var":
                self._var(el, scope)
        dialogs = [el for el in root if el.tag in (_Q + "form", _Q + "menu")]
        if not dialogs:
            raise _End("end")
        current = dialogs[0]
        while True:
            target: str | None = None
            try:
                if current.tag == _Q + "menu":
                    self._run_menu(current, scope)
                else:
                    self._run_form(current, scope)
                raise _End("end")  # a dialog that runs out without a transition ends the call
            except _Goto as goto:
                target = goto.form
            except _Transition as t:
                if not (t.url and t.url.startswith("#")):
                    return t
                target = t.url[1:]
            found = [d for d in dialogs if d.get("id") == target]
            if not found:
                raise WalkError(f"{url}: no dialog #{target}")
            current = found[0]

    # forms

    def _run_form(self, form: Any, outer: dict[str, Any]) -> None:
        scope = dict(outer)
        items = []
        for el in form:
            name = el.tag[len(_Q) :] if isinstance(el.tag, str) else ""
            if name == "var":
                self._var(el, scope)
            elif name in ("block", "field"):
                key = el.get("name") or f"_item{len(items)}"
                scope.setdefault(key, UNDEFINED)
                items.append((key, el))
        filled = form.findall(_Q + "filled")
        next_item: str | None = None
        while True:
            self._tick()
            chosen = None
            for key, el in items:
                if next_item is not None and key != next_item:
                    continue
                if scope.get(key, UNDEFINED) is UNDEFINED and (
                    el.get("cond") is None or _truthy(evaluate(el.get("cond"), scope))
                ):
                    chosen = (key, el)
                    break
            next_item = None
            if chosen is None:
                return
            key, el = chosen
            try:
                if el.tag == _Q + "block":
                    scope[key] = True
                    self._execute(el, scope)
                else:
                    self._collect(key, el, scope)
                    for handler in el.findall(_Q + "filled"):
                        self._execute(handler, scope)
                    for handler in filled:
                        names = (
                            handler.get("namelist") or " ".join(k for k, e in items if e.tag != _Q + "block")
                        ).split()
                        mode = handler.get("mode", "all")
                        done = [scope.get(n, UNDEFINED) is not UNDEFINED for n in names]
                        if key in names and (all(done) if mode == "all" else any(done)):
                            self._execute(handler, scope)
            except _Goto as goto:
                if goto.item is None:
                    raise
                next_item = goto.item
                scope[goto.item] = UNDEFINED
            except _Reprompt:
                continue

    def _collect(self, key: str, el: Any, scope: dict[str, Any]) -> None:
        """Play the field's prompts and take the caller's next keys, until they match or the caller
        hangs up."""
        grammars = _field_grammars(el)
        if not grammars:
            raise WalkError(f"field {key} has no DTMF grammar")
        while True:
            self._tick()
            for prompt in el.findall(_Q + "prompt"):
                self._say(prompt, scope)
            if not self._keys:
                raise _End("hangup")
            keys = self._keys.pop(0)
            if keys is None:
                event = "noinput"
            else:
                keys = keys[:-1] if keys.endswith("#") and len(keys) > 1 else keys
                for grammar in grammars:
                    value = grammar.match(keys)
                    if value is not None:
                        scope[key] = value
                        return
                event = "nomatch"
            handlers = el.findall(_Q + event) + [
                c for c in el.findall(_Q + "catch") if event in (c.get("event") or "").split()
            ]
            if handlers:
                with contextlib.suppress(_Reprompt):
                    self._execute(handlers[0], scope)
            # no handler, or a handler without a transition: the platform asks again

    # menus

    def _run_menu(self, menu: Any, scope: dict[str, Any]) -> None:
        choices = menu.findall(_Q + "choice")
        while True:
            self._tick()
            for prompt in menu.findall(_Q + "prompt"):
                self._say(prompt, scope, choices)
            if not self._keys:
                raise _End("hangup")
            keys = self._keys.pop(0)
            for choice in choices:
                if keys is not None and choice.get("dtmf") == keys.rstrip("#"):
                    target = choice.get("next") or evaluate(choice.get("expr"), scope)
                    raise _Transition(str(target))
            event = "noinput" if keys is None else "nomatch"
            for handler in menu.findall(_Q + event):
                with contextlib.suppress(_Reprompt):
                    self._execute(handler, scope)
                break

    # executable content

    def _execute(self, el: Any, scope: dict[str, Any]) -> None:
        for child in el:
            if not isinstance(child.tag, str):
                continue
            self._statement(child, scope)

    def _statement(self, el: Any, scope: dict[str, Any]) -> None:
        name = el.tag[len(_Q) :]
        if name in ("prompt", "audio"):
            self._say(el, scope)
        elif name == "var":
            self._var(el, scope)
        elif name == "assign":
            scope[el.get("name")] = evaluate(el.get("expr"), scope)
        elif name == "clear":
            for n in (el.get("namelist") or "").split():
                scope[n] = UNDEFINED
        elif name == "if":
            self._if(el, scope)
        elif name == "goto":
            if el.get("nextitem"):
                raise _Goto(item=el.get("nextitem"))
            target = el.get("next") or str(evaluate(el.get("expr"), scope))
            raise _Transition(target)
        elif name == "submit":
            target = el.get("next") or str(evaluate(el.get("expr"), scope))
            names = (el.get("namelist") or "").split()
            data = {n: _js_str(scope.get(n)) for n in names if scope.get(n, UNDEFINED) is not UNDEFINED}
            raise _Transition(target, el.get("method", "get"), data)
        elif name == "reprompt":
            raise _Reprompt()
        elif name in ("exit", "disconnect"):
            raise _End(name)
        elif name == "log":
            pass
        else:
            raise WalkError(f"<{name}> is not supported by this walker")

    def _if(self, el: Any, scope: dict[str, Any]) -> None:
        branch_taken = _truthy(evaluate(el.get("cond"), scope))
        running = branch_taken
        for child in el:
            if not isinstance(child.tag, str):
                continue
            tag = child.tag[len(_Q) :]
            if tag in ("elseif", "else"):
                if branch_taken:
                    running = False
                else:
                    running = tag == "else" or _truthy(evaluate(child.get("cond"), scope))
                    branch_taken = running
                continue
            if running:
                self._statement(child, scope)

    def _var(self, el: Any, scope: dict[str, Any]) -> None:
        expr = el.get("expr")
        scope[el.get("name")] = UNDEFINED if expr is None else evaluate(expr, scope)

    def _say(self, el: Any, scope: dict[str, Any], choices: list[Any] | None = None) -> None:
        parts: list[str] = []

        def walk(node: Any) -> None:
            if node.text:
                parts.append(node.text)
            for child in node:
                if isinstance(child.tag, str):
                    tag = child.tag[len(_Q) :]
                    if tag == "value":
                        parts.append(_js_str(evaluate(child.get("expr"), scope)))
                    elif tag == "enumerate" and choices:
                        parts.append(
                            " ".join(f"{(c.text or '').strip()}, press {c.get('dtmf')}." for c in choices)
                        )
                    elif tag == "break":
                        parts.append(" ")
                    else:
                        walk(child)
                if child.tail:
                    parts.append(child.tail)

        walk(el)
        text = " ".join("".join(parts).split())
        if text:
            self._call.spoken.append(text)

    def _tick(self) -> None:
        self._steps += 1
        if self._steps > self.max_steps:
            raise WalkError(f"more than {self.max_steps} steps: the dialog loops")
