"""``whatsapp-gateway demo``: the whole product on one machine, no Meta account needed.

A real Asterisk with the sample ``asterisk-conf/`` (in the sandbox chroot), the Cloud API
simulator standing in for Meta, and the gateway between them, wired as they would be in
production except that ``whatsapp.graph_url`` points at the simulator. The config it runs is
written to ``var/demo.yaml`` so an admin can read (and copy) what a real one looks like.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from pathlib import Path

import yaml

from gateway.app import Gateway
from gateway.config import load_config
from gateway.media import aiortc_hooks
from gateway.sandbox.local_asterisk import LocalAsterisk
from gateway.simulator.cloud_api import (
    DEFAULT_DISPLAY_NUMBER,
    DEFAULT_PHONE_NUMBER_ID,
    CloudApiSimulator,
    SimulatedCall,
)
from gateway.simulator.control import add_control_routes, parse_script, run_script
from gateway.simulator.users import SimulatedUser

log = logging.getLogger(__name__)

SIM_PORT = 8090
GATEWAY_PORT = 8080
DEMO_SECRETS = {"WA_ACCESS_TOKEN": "demo-access-token", "WA_APP_SECRET": "demo-app-secret",
                "WA_VERIFY_TOKEN": "demo-verify-token", "AMI_SECRET": "gateway-secret",
                "GATEWAY_API_TOKEN": "demo-api-token"}
EXAMPLE_SCRIPT = "wait-answer; wait-audio; wait 3; press 3; wait 2; press 1234#; wait 6; hangup"


def demo_config(path: Path) -> dict:
    data = {
        "whatsapp": {"graph_url": f"http://127.0.0.1:{SIM_PORT}/v25.0",
                     "access_token": "${WA_ACCESS_TOKEN}", "app_secret": "${WA_APP_SECRET}",
                     "verify_token": "${WA_VERIFY_TOKEN}"},
        "numbers": [{"phone_number_id": DEFAULT_PHONE_NUMBER_ID,
                     "display_number": DEFAULT_DISPLAY_NUMBER,
                     "context": "from-whatsapp", "extension": "s", "max_calls": 20}],
        "asterisk": {"ami": {"host": "127.0.0.1", "port": 5038, "username": "gateway",
                             "secret": "${AMI_SECRET}"}, "codec": "g722"},
        "media": {"rtp_address": "127.0.0.1", "rtp_ports": "40000-40199",
                  "webrtc_addresses": ["127.0.0.1"]},
        "http": {"listen": f"127.0.0.1:{GATEWAY_PORT}"},
        "api": {"tokens": ["${GATEWAY_API_TOKEN}"]},
        "store": {"path": str(path.parent / "demo.sqlite3")},
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("# Written by `whatsapp-gateway demo`: the gateway's config in sandbox mode.\n"
                    + yaml.safe_dump(data, sort_keys=False))
    return data


async def run_demo(config_path: Path | None = None, call_script: str | None = None) -> None:
    import os

    for key, value in DEMO_SECRETS.items():
        os.environ.setdefault(key, value)
    path = config_path or Path("var/demo.yaml")
    if config_path is None:
        demo_config(path)
    config = load_config(path)

    asterisk = LocalAsterisk("demo", ami_port=config.asterisk.ami.port)
    aiortc_hooks.set_host_addresses(["127.0.0.1", "::1"])
    # Demo users may be called back: they hold a temporary permission, answer after 2 s,
    # press 1 and hang up after a while (so an outbound call shows something happening).
    sim = CloudApiSimulator(app_secret=config.whatsapp.app_secret.reveal(),
                            access_token=config.whatsapp.access_token.reveal(),
                            webhook_url=f"http://127.0.0.1:{config.http.port}/webhook",
                            port=SIM_PORT,
                            default_user=SimulatedUser(permission="temporary",
                                                       answer_after_s=2.0,
                                                       script="wait 3; press 1; wait 8; hangup"))
    add_control_routes(sim)
    printers: set[asyncio.Task] = set()

    def follow(call: SimulatedCall) -> None:
        async def run() -> None:
            async for line in call.transcript.follow():
                print(f"[phone +{call.from_wa_id}] {line}", flush=True)
        task = asyncio.ensure_future(run())
        printers.add(task)
        task.add_done_callback(printers.discard)

    sim.call_listeners.append(follow)
    gateway = Gateway(config)

    def show_dialplan_event(ev: dict[str, str]) -> None:
        """What the dialplan itself reports (UserEvent markers in asterisk-conf/), so a
        newcomer sees the caller's digits arrive in Asterisk, not just leave the phone."""
        skip = {"Event", "Privilege", "UserEvent", "Channel", "ChannelState", "ChannelStateDesc",
                "ConnectedLineNum", "ConnectedLineName", "Language", "AccountCode", "Priority",
                "Uniqueid", "Linkedid", "Exten", "Context", "CallerIDNum", "CallerIDName"}
        fields = ", ".join(f"{k}: {v}" for k, v in ev.items() if k not in skip)
        print(f"[asterisk] UserEvent {ev.get('UserEvent')} ({fields}) on {ev.get('Channel')}",
              flush=True)

    gateway.ami.add_event_listener("UserEvent", show_dialplan_event)
    print("Starting Asterisk (first run builds its chroot, about a minute)...", flush=True)
    await asterisk.start()
    try:
        await sim.start()
        await gateway.start()
        print(f"""
Ready. Asterisk runs asterisk-conf/ (AMI 127.0.0.1:{config.asterisk.ami.port}), the WhatsApp
simulator stands in for Meta on {sim.base_url}, the gateway listens on {gateway.url}
(config: {path}; metrics: {gateway.url}/metrics).

Place a simulated WhatsApp call from another terminal:

  .venv/bin/whatsapp-gateway sim call --sim-url {sim.base_url} --from 15550002222 \\
      --name "Test User" --script "{EXAMPLE_SCRIPT}"

The caller hears the IVR of asterisk-conf/extensions.conf [from-whatsapp]: 3 reads a code and
says it back.

Call a WhatsApp user from a CRM (the simulated user answers, presses 1, hangs up):

  curl -s -X POST {gateway.url}/v1/calls -H "Authorization: Bearer demo-api-token" \\
      -d '{{"to": "+15550003333", "context": "from-whatsapp"}}'

or from the dialplan, as an agent would (asterisk-conf [to-whatsapp]):

  chroot {asterisk.root} asterisk -C {asterisk.conf_path} \\
      -rx "channel originate Local/+15550003333@to-whatsapp application Echo"

Press Ctrl-C here to stop everything.
""", flush=True)
        if call_script:
            call = await sim.place_call(from_wa_id="15550002222", profile_name="Test User")
            result = await run_script(call, parse_script(call_script))
            await call.wait_ended(30)
            for line in call.summary().lines():
                print(line, flush=True)
            print("result: PASS" if result.ok else f"result: FAIL: {result.reason}", flush=True)
            return
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError):
                loop.add_signal_handler(sig, stop.set)
        await stop.wait()
    finally:
        print("Stopping...", flush=True)
        await gateway.stop()
        await sim.close()
        for task in list(printers):
            task.cancel()
        await asterisk.stop()
