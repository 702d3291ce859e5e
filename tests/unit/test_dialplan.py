"""The PSTN guard's reading of dialplan steps (gateway/asterisk/dialplan.py), on ListDialplan
events shaped as Asterisk 22 sends them (the e2e tests read the real ones)."""

from gateway.asterisk.dialplan import Dialplan, jumps, pstn_risks, split_args, trunk_reason


def prio(context: str, exten: str, n: int, app: str, data: str) -> dict[str, str]:
    return {"Event": "ListDialplan", "Context": context, "Extension": exten,
            "Priority": str(n), "Application": app, "AppData": data, "Registrar": "pbx_config"}


def include(context: str, included: str) -> dict[str, str]:
    return {"Event": "ListDialplan", "Context": context, "IncludeContext": included,
            "Registrar": "pbx_config"}


def test_split_args_keeps_functions_and_expressions_whole():
    assert split_args("PJSIP/${CUT(x,-,1)}@t,30,tT") == ["PJSIP/${CUT(x,-,1)}@t", "30", "tT"]
    assert split_args("$[${A} = 1]?a,s,1:b,s,1") == ["$[${A} = 1]?a", "s", "1:b", "s", "1"]


def test_jumps_name_the_contexts_each_application_can_reach():
    assert jumps("Goto", "menu", "here") == [("goto", "here")]
    assert jumps("Goto", "s,1", "here") == [("goto", "here")]
    assert jumps("Goto", "other,s,1", "here") == [("goto", "other")]
    assert jumps("GotoIf", '$["${X}" = "1"]?a,s,1:b,s,1', "here") == \
        [("gotoif", "a"), ("gotoif", "b")]
    assert jumps("GotoIf", "$[1]?:ok", "here") == [("gotoif", "here")]
    assert jumps("Gosub", "sub,s,1(a,b)", "here") == [("gosub", "sub")]
    assert jumps("Macro", "dialout,1", "here") == [("macro", "macro-dialout")]
    assert jumps("Goto", "${DEST},s,1", "here") == [("goto", None)]
    assert jumps("Dial", "PJSIP/1&Local/200@agents/n,20", "here") == [("Dial(Local)", "agents")]
    assert jumps("Playback", "hello", "here") == []


def test_trunk_shapes():
    assert trunk_reason("PJSIP/100") is None
    assert trunk_reason("Local/100@agents") is None
    assert trunk_reason("UnicastRTP/127.0.0.1:4000") is None
    assert "PJSIP/<number>@<trunk>" in trunk_reason("PJSIP/+5511999990000@carrier")
    assert "peer" in trunk_reason("SIP/carrier/5511999990000")
    assert "peer" in trunk_reason("IAX2/provider/123")
    assert "telephone line" in trunk_reason("DAHDI/g1/123")
    assert "variables" in trunk_reason("${TRUNK}/123")
    assert "variables" in trunk_reason("PJSIP/${AGENT}")


def test_reachability_follows_includes_and_jumps_once_each():
    plan = Dialplan.from_events([
        prio("wa", "s", 1, "Goto", "ivr,s,1"),
        include("wa", "shared"),
        prio("ivr", "1", 1, "Dial", "PJSIP/100"),
        prio("ivr", "2", 1, "Goto", "wa,s,1"),  # a loop back: visited once
        prio("shared", "_0X.", 1, "Dial", "PJSIP/${EXTEN}@pstn,30"),
        prio("unreached", "s", 1, "Dial", "DAHDI/1/123"),
    ])
    (risk,) = pstn_risks(plan, "wa")
    assert (risk.context, risk.extension) == ("shared", "_0X.")
    assert str(risk).startswith(
        "wa -> (include) shared: Dial(PJSIP/${EXTEN}@pstn) at shared,_0X.,1 sends a number")
    (via_ivr,) = pstn_risks(plan, "ivr")
    assert via_ivr.path == ("(goto) wa", "(include) shared")
