"""What Asterisk's dialplan lets a WhatsApp call reach, read over AMI (``ShowDialPlan``).

Two checks for ``whatsapp-gateway check-config --asterisk``:

- every context/extension the config routes calls to exists (a typo would only show as callers
  being hung up at once);
- the PSTN guard: Meta's terms forbid connecting a WhatsApp call to the public telephone network
  on any leg, so no dialplan a WhatsApp call runs may reach a ``Dial()`` to a trunk. From each
  WhatsApp context it follows ``include =>``, ``Goto``/``GotoIf``/``GotoIfTime``, ``Gosub``/
  ``GosubIf``, ``Macro`` and ``Dial(Local/...@context)`` to every context the call could get to,
  and reports each ``Dial()`` whose target looks like a trunk.

Reachability is per context, not per extension (a ``Goto`` into a context counts its whole
dialplan as reachable): a conservative guard may warn about a branch no caller takes, but it
does not miss one. What looks like a trunk, since Asterisk has no such notion:
``DAHDI``/``mISDN``/``CAPI`` lines; ``PJSIP/<number>@<endpoint>``, ``SIP/<peer>/<number>`` and
``IAX2/<peer>/<number>`` (a number sent to a peer); and a dial string built from variables,
which cannot be told apart. ``PJSIP/<endpoint>`` alone (a phone), ``Local`` (followed) and
``UnicastRTP`` (the gateway's own channels) are fine. Queue members are not in the dialplan and
are not checked.
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

LINE_TECHNOLOGIES = frozenset({"dahdi", "zap", "misdn", "capi", "ooh323", "h323"})
"""Channel technologies that are telephone lines or PSTN gateways whatever the dial string."""
PEER_TECHNOLOGIES = frozenset({"pjsip", "sip", "iax2", "iax", "motif"})
"""Technologies that reach a phone or a trunk, told apart by the dial string's shape."""
INTERNAL_TECHNOLOGIES = frozenset({"local", "unicastrtp", "surrogate", "bridgemedia",
                                   "announcer", "recorder", "multicastrtp", "audiosocket",
                                   "console"})


@dataclass
class Priority:
    extension: str
    priority: str
    application: str
    data: str


@dataclass
class Dialplan:
    """The dialplan as ``ShowDialPlan`` lists it: priorities and includes per context."""

    priorities: dict[str, list[Priority]] = field(default_factory=dict)
    includes: dict[str, list[str]] = field(default_factory=dict)

    @classmethod
    def from_events(cls, events: Iterable[Mapping[str, str]]) -> Dialplan:
        plan = cls()
        for ev in events:
            if ev.get("Event") != "ListDialplan":
                continue
            context = ev.get("Context", "")
            if ev.get("IncludeContext"):
                plan.includes.setdefault(context, []).append(ev["IncludeContext"])
                plan.priorities.setdefault(context, [])
                continue
            plan.priorities.setdefault(context, []).append(Priority(
                ev.get("Extension", ""), ev.get("Priority", ""), ev.get("Application", ""),
                ev.get("AppData", "")))
        return plan

    @property
    def contexts(self) -> set[str]:
        return set(self.priorities)


@dataclass(frozen=True)
class PstnRisk:
    """A ``Dial()`` a WhatsApp call can reach whose target looks like a trunk."""

    start: str
    """The WhatsApp context the call starts in."""
    path: tuple[str, ...]
    """Contexts from ``start`` to the one holding the Dial, each step as ``how context``."""
    context: str
    extension: str
    priority: str
    target: str
    why: str

    def __str__(self) -> str:
        route = " -> ".join((self.start, *self.path))
        return (f"{route}: Dial({self.target}) at {self.context},{self.extension},"
                f"{self.priority} {self.why}; Meta forbids connecting WhatsApp calls to the "
                "PSTN on any leg")


def split_args(data: str) -> list[str]:
    """Application arguments split on top-level commas (not inside ``${...}``, ``$[...]``
    or parentheses), the way Asterisk's AST_STANDARD_APP_ARGS sees them."""
    args, depth, current = [], 0, []
    for ch in data:
        if ch in "([{":
            depth += 1
        elif ch in ")]}" and depth:
            depth -= 1
        if ch == "," and depth == 0:
            args.append("".join(current).strip())
            current = []
        else:
            current.append(ch)
    args.append("".join(current).strip())
    return args


def _branches(data: str) -> list[str]:
    """The labels of ``cond?a:b`` (GotoIf, GosubIf, GotoIfTime), each may be empty."""
    if "?" not in data:
        return []
    _, _, labels = data.rpartition("?")
    return [b for b in labels.split(":") if b.strip()]


def _target_context(label: str, here: str) -> str | None:
    """The context a Goto/Gosub label lands in: ``[[context,]exten,]priority``; Gosub's
    ``(args)`` is dropped. None when it is built from variables (not followable)."""
    label = re.sub(r"\(.*\)\s*$", "", label.strip())
    parts = split_args(label)
    context = parts[0] if len(parts) >= 3 else here
    if "$" in context:
        return None
    return context.strip()


def jumps(app: str, data: str, here: str) -> list[tuple[str, str | None]]:
    """Where one dialplan step can send the call: (how, context or None if unknowable)."""
    name = app.lower()
    if name in ("goto", "gosub"):
        return [(name, _target_context(data, here))]
    if name in ("gotoif", "gosubif", "gotoiftime"):
        return [(name, _target_context(b, here)) for b in _branches(data)]
    if name == "macro":
        macro = split_args(data)[0]
        return [("macro", None if "$" in macro else f"macro-{macro}")]
    if name == "dial":
        out: list[tuple[str, str | None]] = []
        for target in split_args(data)[0].split("&"):
            tech, _, resource = target.partition("/")
            if tech.strip().lower() == "local":
                _exten, _, context = resource.partition("@")
                context = context.split("/")[0]
                out.append(("Dial(Local)", None if "$" in context or not context
                            else context))
        return out
    return []


def trunk_reason(target: str) -> str | None:
    """Why a Dial target looks like a trunk, or None when it looks like a phone or is ours."""
    tech, sep, resource = target.strip().partition("/")
    tech_l = tech.lower()
    if "$" in tech:
        return "is built from variables (its technology cannot be checked)"
    if not sep or tech_l in INTERNAL_TECHNOLOGIES:
        return None
    if tech_l in LINE_TECHNOLOGIES:
        return f"uses {tech}, a telephone line technology"
    if tech_l in PEER_TECHNOLOGIES:
        if tech_l == "pjsip" and "@" in resource:
            return "sends a number to a PJSIP endpoint (PJSIP/<number>@<trunk>)"
        if tech_l != "pjsip" and "/" in resource:
            return f"sends a number to a peer ({tech}/<peer>/<number>)"
        if "$" in resource:
            return "is built from variables (the endpoint cannot be checked)"
        return None
    return f"uses {tech}, not a technology known to stay inside the PBX"


def pstn_risks(plan: Dialplan, start: str) -> list[PstnRisk]:
    """Every trunk-like Dial() reachable from ``start`` (breadth first, each context once)."""
    risks: list[PstnRisk] = []
    paths: dict[str, tuple[str, ...]] = {start: ()}
    queue = deque([start])
    while queue:
        context = queue.popleft()

        def reach(how: str, target: str | None, context: str = context) -> None:
            if target is not None and target not in paths:
                paths[target] = (*paths[context], f"({how}) {target}")
                queue.append(target)

        for included in plan.includes.get(context, []):
            reach("include", included)
        for p in plan.priorities.get(context, []):
            for how, target in jumps(p.application, p.data, context):
                reach(how, target)
            if p.application.lower() != "dial":
                continue
            for target in split_args(p.data)[0].split("&"):
                why = trunk_reason(target)
                if why:
                    risks.append(PstnRisk(start, paths[context], context, p.extension,
                                          p.priority, target.strip(), why))
    return risks


def configured_routes(config) -> list[tuple[str, str, str]]:  # type: ignore[no-untyped-def]
    """(config key, context, extension) of every place the config sends calls."""
    routes = []
    for i, n in enumerate(config.numbers):
        routes.append((f"numbers[{i}].context", n.context, n.extension))
        if n.closed_context:
            routes.append((f"numbers[{i}].closed_context", n.closed_context,
                           n.closed_extension))
    return routes


@dataclass
class DialplanReport:
    missing: list[str] = field(default_factory=list)
    """``numbers[i].context: ...`` for each route Asterisk does not have."""
    risks: list[PstnRisk] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.missing


async def check_dialplan(ami, config, extra_contexts: Iterable[str] = ()) -> DialplanReport:  # type: ignore[no-untyped-def]
    """Both checks against a connected :class:`~gateway.asterisk.ami.AmiClient`.
    ``extra_contexts`` are guarded too (e.g. ``to-whatsapp``, where agents dial users)."""
    report = DialplanReport()
    routes = configured_routes(config)
    for key, context, exten in routes:
        if not await ami.dialplan_has(context, exten):
            report.missing.append(f"{key}: extension {exten!r} in context {context!r} does "
                                  "not exist in Asterisk's dialplan")
    plan = Dialplan.from_events(await ami.show_dialplan())
    starts = list(dict.fromkeys([c for _, c, _ in routes] + list(extra_contexts)))
    for start in starts:
        if start in plan.contexts:
            report.risks += pstn_risks(plan, start)
    return report
