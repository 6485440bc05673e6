"""The test walker itself, on small hand-written VoiceXML documents served by a tiny Starlette app."""

from __future__ import annotations

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.testclient import TestClient

from tests.unit.vxml_walker import CONTENT_TYPE, Walker, WalkError, check_vxml, evaluate

HEAD = '<?xml version="1.0" encoding="UTF-8"?>\n<vxml version="2.1" xmlns="http://www.w3.org/2001/vxml">'


def vxml(body: str) -> str:
    return f"{HEAD}{body}</vxml>"


def serve(docs: dict[str, str], content_type: str = CONTENT_TYPE) -> TestClient:
    """Serves each document at its path; /echo speaks back what was submitted to it, and how."""

    async def page(request: Request) -> Response:
        return Response(docs[request.url.path], media_type=content_type)

    async def echo(request: Request) -> Response:
        values = dict(request.query_params) | dict(await request.form())
        said = " ".join(f"{k}={v}" for k, v in sorted(values.items()))
        doc = vxml(f"<form><block><prompt>{request.method} {said}</prompt></block></form>")
        return Response(doc, media_type=CONTENT_TYPE)

    routes = [Route(path, page) for path in docs] + [Route("/echo", echo, methods=["GET", "POST"])]
    return TestClient(Starlette(routes=routes))


LOGIN = vxml(
    """
<form id="login">
  <block><prompt>Welcome.</prompt></block>
  <field name="party" type="digits?length=4">
    <prompt>Key your number.</prompt>
    <nomatch><prompt>That is not four digits.</prompt><reprompt/></nomatch>
    <noinput><prompt>I did not hear you.</prompt><reprompt/></noinput>
  </field>
  <field name="pin">
    <grammar src="builtin:dtmf/digits?minlength=2;maxlength=3"/>
    <prompt>Key your PIN, then hash.</prompt>
  </field>
  <filled mode="all" namelist="party pin">
    <submit next="/echo" method="post" namelist="party pin"/>
  </filled>
</form>"""
)


def test_fields_prompts_nomatch_noinput_and_a_post_submit():
    walker = Walker(serve({"/start.vxml": LOGIN}))
    call = walker.call("/start.vxml", ["12", None, "1234", "56#"])
    assert call.spoken == [
        "Welcome.",
        "Key your number.",
        "That is not four digits.",
        "Key your number.",
        "I did not hear you.",
        "Key your number.",
        "Key your PIN, then hash.",
        "POST party=1234 pin=56",
    ]
    assert call.ended == "end"
    assert [url for url, _ in call.documents] == ["/start.vxml", "/echo"]


def test_the_caller_hangs_up_when_the_keys_run_out():
    call = Walker(serve({"/start.vxml": LOGIN})).call("/start.vxml", ["1234"])
    assert call.ended == "hangup" and call.spoken[-1] == "Key your PIN, then hash."


OPTIONS = vxml(
    """
<var name="greeting" expr="'Hello'"/>
<form id="main">
  <var name="count" expr="0"/>
  <field name="pick">
    <prompt><value expr="greeting + ', caller'"/>. For sales press 1, for help press 2.</prompt>
    <option dtmf="1" value="sales">sales</option>
    <option dtmf="2" value="help">help</option>
    <filled>
      <assign name="count" expr="count + 1"/>
      <if cond="pick == 'sales' &amp;&amp; count == 1">
        <prompt>Sales, once.</prompt>
        <goto next="#second"/>
      <elseif cond="pick == 'help'"/>
        <prompt>Help it is.</prompt>
        <submit next="/echo" namelist="pick count"/>
      <else/>
        <prompt>Never here.</prompt>
      </if>
    </filled>
  </field>
</form>
<form id="second">
  <field name="more">
    <grammar mode="dtmf" version="1.0" root="top">
      <rule id="top"><one-of><item>*</item><item repeat="3"><ruleref uri="#d"/></item></one-of></rule>
      <rule id="d"><one-of><item>1</item><item>2</item></one-of></rule>
    </grammar>
    <prompt>Three ones or twos, or star.</prompt>
    <nomatch><prompt>No.</prompt><reprompt/></nomatch>
  </field>
  <block name="said">
    <if cond="more == '*'"><prompt>Star.</prompt><exit/></if>
    <prompt>You keyed <value expr="more"/>.</prompt>
    <clear namelist="more said"/>
  </block>
</form>"""
)


def test_options_filled_if_elseif_assign_goto_and_a_get_submit():
    client = serve({"/m.vxml": OPTIONS})
    call = Walker(client).call("/m.vxml", ["2"])
    assert call.spoken == [
        "Hello, caller. For sales press 1, for help press 2.",
        "Help it is.",
        "GET count=1 pick=help",
    ]


def test_goto_a_form_inline_srgs_grammar_and_clear():
    call = Walker(serve({"/m.vxml": OPTIONS})).call("/m.vxml", ["1", "13", "121", "*"])
    assert call.spoken == [
        "Hello, caller. For sales press 1, for help press 2.",
        "Sales, once.",
        "Three ones or twos, or star.",
        "No.",
        "Three ones or twos, or star.",
        "You keyed 121.",
        "Three ones or twos, or star.",
        "Star.",
    ]
    assert call.ended == "exit"


MENU = vxml(
    """
<menu id="top">
  <prompt>Main menu. <enumerate/></prompt>
  <choice dtmf="1" next="/echo">Echo</choice>
  <choice dtmf="2" next="#bye">Goodbye</choice>
  <nomatch><prompt>Pick 1 or 2.</prompt><reprompt/></nomatch>
</menu>
<form id="bye"><block><prompt>Bye.</prompt><disconnect/></block></form>"""
)


def test_menu_choices_enumerate_and_disconnect():
    client = serve({"/menu.vxml": MENU})
    call = Walker(client).call("/menu.vxml", ["7", "2"])
    assert call.spoken == [
        "Main menu. Echo, press 1. Goodbye, press 2.",
        "Pick 1 or 2.",
        "Main menu. Echo, press 1. Goodbye, press 2.",
        "Bye.",
    ]
    assert call.ended == "disconnect"
    assert Walker(client).call("/menu.vxml", ["1"]).spoken[-1] == "GET"


def test_wrong_content_type_and_invalid_documents_fail_the_walk():
    with pytest.raises(WalkError, match="content-type"):
        Walker(serve({"/x.vxml": LOGIN}, "text/xml")).call("/x.vxml", [])
    bad = HEAD.replace('"2.1"', '"2.0"') + "<form><blink/></form></vxml>"
    with pytest.raises(WalkError, match=r"not VoiceXML 2\.1"):
        Walker(serve({"/x.vxml": bad})).call("/x.vxml", [])


@pytest.mark.parametrize(
    ("document", "problem"),
    [
        ("<vxml", "not well-formed"),
        ('<vxml version="2.1"/>', "not {http://www.w3.org/2001/vxml}vxml"),
        ('<vxml version="2.0" xmlns="http://www.w3.org/2001/vxml"/>', "not '2.1'"),
        (vxml("<form><blink/></form>"), "<blink> is not a VoiceXML 2.1 element"),
        (vxml('<form><block><assign name="x"/></block></form>'), "<assign> (line 2) needs expr"),
        (vxml("<form><block><goto/></block></form>"), "needs next or expr or nextitem or expritem"),
        (vxml('<form><field name="f"><grammar/></field></form>'), "neither src nor an inline rule"),
        (vxml('<form><block><submit next="x" method="put"/></block></form>'), "method must be get or post"),
        (vxml('<menu><choice dtmf="A" next="x"/></menu>'), "dtmf 'A' is not keys 0-9 * #"),
        (
            vxml('<form xmlns:h="urn:x"><block><h:b/></block></form>'),
            "element {urn:x}b is outside the VoiceXML namespace",
        ),
    ],
)
def test_checker_names_each_problem(document, problem):
    problems = check_vxml(document.encode())
    assert any(problem in p for p in problems), problems


def test_checker_accepts_the_hand_written_documents():
    for doc in (LOGIN, OPTIONS, MENU):
        assert check_vxml(doc.encode()) == []


@pytest.mark.parametrize(
    ("expr", "value"),
    [
        ("'a' + 1", "a1"),
        ("x == '3'", True),
        ("x != 3", False),
        ("!(x == '3') || y", "yes"),
        ("x.length + 1", 2),
        ("'it\\'s'", "it's"),
        ('"q\\u0027"', "q'"),
        ("z == undefined", True),
        ("1 < 2 && 2 >= 2", True),
    ],
)
def test_expressions(expr, value):
    assert evaluate(expr, {"x": "3", "y": "yes"}) == value
