"""The orphan sweep's policy (gateway/calls/orphans.py): which channels a (re)connected
gateway hangs up. The real Asterisk runs it in tests/e2e/test_ami_handoff.py."""

from __future__ import annotations

from gateway.calls.orphans import ORPHAN_CAUSE, OrphanSweep, orphans

CHANNELS = [
    {"Uniqueid": "wa-live", "Channel": "UnicastRTP/127.0.0.1:40000-0x1"},
    {"Uniqueid": "wa-lost", "Channel": "UnicastRTP/127.0.0.1:40002-0x2"},
    {"Uniqueid": "wa-agent", "Channel": "PJSIP/100-00000001"},  # not ours to judge
    {"Uniqueid": "1733400000.12", "Channel": "UnicastRTP/10.0.0.9:5000-0x3"},  # not ours
]


def test_only_our_unowned_unicastrtp_channels_are_orphans():
    got = orphans(CHANNELS, owned=lambda uniqueid: uniqueid == "wa-live")
    assert [c["Uniqueid"] for c in got] == ["wa-lost"]


class Ami:
    def __init__(self) -> None:
        self.on_connect: list = []
        self.hangups: list[tuple[str, int]] = []

    async def core_show_channels(self) -> list[dict[str, str]]:
        return CHANNELS

    async def hangup(self, channel_id: str, cause: int = 16) -> bool:
        self.hangups.append((channel_id, cause))
        return channel_id != "wa-lost"  # gone by itself meanwhile: not counted


async def test_the_sweep_runs_on_connect_and_hangs_up_with_its_cause():
    ami = Ami()
    sweep = OrphanSweep(ami, owned=lambda uniqueid: False).install()
    assert ami.on_connect == [sweep.sweep]
    assert await ami.on_connect[0]() == ["wa-live"]
    assert ami.hangups == [("wa-live", ORPHAN_CAUSE), ("wa-lost", ORPHAN_CAUSE)]
