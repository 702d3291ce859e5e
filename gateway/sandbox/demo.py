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
import os
import signal
import socket
from dataclasses import dataclass
from pathlib import Path

import yaml

from gateway.app import Gateway
from gateway.config import ConfigError, load_config
from gateway.errors import SetupError
from gateway.media import aiortc_hooks
from gateway.sandbox.host import port_is_free
from gateway.sandbox.local_asterisk import LocalAsterisk, LocalAsteriskError
from gateway.simulator.cloud_api import (
    DEFAULT_DISPLAY_NUMBER,
    DEFAULT_PHONE_NUMBER_ID,
    CloudApiSimulator,
    SimulatedCall,
)
from gateway.simulator.control import add_control_routes, parse_script, run_script
from gateway.simulator.prompts import library_for
from gateway.simulator.users import SimulatedUser

log = logging.getLogger(__name__)

SIM_PORT = 8090
GATEWAY_PORT = 8080
AMI_PORT = 5038
DEMO_SECRETS = {"WA_ACCESS_TOKEN": "demo-access-token", "WA_APP_SECRET": "demo-app-secret",
                "WA_VERIFY_TOKEN": "demo-verify-token", "AMI_SECRET": "gateway-secret",
                "GATEWAY_API_TOKEN": "demo-api-token"}
EXAMPLE_SCRIPT = "wait-answer; wait-audio; wait 3; press 3; wait 2; press 1234#; wait 6; hangup"


class DemoError(SetupError, RuntimeError):
    """The demo cannot start; the message is one line saying what to do."""


@dataclass(frozen=True)
class DemoPorts:
    ami: int = AMI_PORT
    http: int = GATEWAY_PORT
    sim: int = SIM_PORT


def choose_port(what: str, option: str, requested: int | None, default: int,
                notes: list[str]) -> int:
    """The port to use for ``what``: the one asked for (which must be free), else the default,
    else one the kernel picks, with a note saying so and how to choose."""
    if requested is not None:
        if not port_is_free(requested):
            raise DemoError(f"port 127.0.0.1:{requested} for {what} is in use; choose "
                            f"another with {option} PORT")
        return requested
    if port_is_free(default):
        return default
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    notes.append(f"port {default} for {what} is in use (another demo?), using {port} "
                 f"instead ({option} PORT to choose)")
    return port


def choose_ports(ami: int | None = None, http: int | None = None, sim: int | None = None,
                 ) -> tuple[DemoPorts, list[str]]:
    notes: list[str] = []
    ports = DemoPorts(ami=choose_port("Asterisk's AMI", "--ami-port", ami, AMI_PORT, notes),
                      http=choose_port("the gateway", "--http-port", http, GATEWAY_PORT, notes),
                      sim=choose_port("the WhatsApp simulator", "--sim-port", sim, SIM_PORT,
                                      notes))
    if len({ports.ami, ports.http, ports.sim}) < 3:
        raise DemoError(f"--ami-port, --http-port and --sim-port must differ, got "
                        f"{ports.ami}, {ports.http}, {ports.sim}")
    return ports, notes


def demo_config(path: Path, ports: DemoPorts = DemoPorts()) -> dict:
    data = {
        "whatsapp": {"graph_url": f"http://127.0.0.1:{ports.sim}/v25.0",
                     "access_token": "${WA_ACCESS_TOKEN}", "app_secret": "${WA_APP_SECRET}",
                     "verify_token": "${WA_VERIFY_TOKEN}"},
        "numbers": [{"phone_number_id": DEFAULT_PHONE_NUMBER_ID,
                     "display_number": DEFAULT_DISPLAY_NUMBER,
                     "context": "from-whatsapp", "extension": "s", "max_calls": 20,
                     "accountcode": "whatsapp-demo"}],
        "asterisk": {"ami": {"host": "127.0.0.1", "port": ports.ami, "username": "gateway",
                             "secret": "${AMI_SECRET}"}, "codec": "g722"},
        "media": {"rtp_address": "127.0.0.1", "rtp_ports": "40000-40199",
                  "webrtc_addresses": ["127.0.0.1"]},
        "http": {"listen": f"127.0.0.1:{ports.http}"},
        "api": {"tokens": ["${GATEWAY_API_TOKEN}"]},
        "store": {"path": str(path.parent / "demo.sqlite3")},
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("# Written by `whatsapp-gateway demo`: the gateway's config in sandbox mode.\n"
                    + yaml.safe_dump(data, sort_keys=False))
    return data


def export_lines(config_path: Path, gateway_url: str, sim_url: str) -> str:
    """Shell lines giving another terminal what the other commands read from the environment:
    the config's secrets (check-config, permissions, settings), and where things listen."""
    secrets = " ".join(f"{k}={v}" for k, v in DEMO_SECRETS.items())
    return (f"  export {secrets}\n"
            f"  export WA_GATEWAY_URL={gateway_url} WA_SIM_URL={sim_url} "
            f"WA_GATEWAY_CONFIG={config_path}")


async def run_demo(config_path: Path | None = None, call_script: str | None = None, *,
                   ami_port: int | None = None, http_port: int | None = None,
                   sim_port: int | None = None) -> int:
    """Run the demo until Ctrl-C (0), or place one call with ``call_script`` and return its
    result: 0 when the script passed, 1 when it failed. Raises :class:`DemoError` (one line)
    when it cannot start."""
    for key, value in DEMO_SECRETS.items():
        os.environ.setdefault(key, value)
    path = config_path or Path("var/demo.yaml")
    if config_path is None:
        ports, notes = choose_ports(ami_port, http_port, sim_port)
        demo_config(path, ports)
    else:
        if any(p is not None for p in (ami_port, http_port, sim_port)):
            raise DemoError("--ami-port/--http-port/--sim-port choose the demo's own config: "
                            "with --config, set the ports in that file")
        notes = []
    try:
        config = load_config(path)
    except ConfigError as exc:
        raise DemoError(f"{path}: {'; '.join(exc.problems)}") from None
    sim_port = int(config.whatsapp.graph_url.rsplit(":", 1)[1].split("/")[0]) \
        if config_path is not None else ports.sim
    for note in notes:
        print(f"demo: {note}", flush=True)

    ami = config.asterisk.ami.port
    asterisk = LocalAsterisk("demo" if ami == AMI_PORT else f"demo-{ami}", ami_port=ami)
    aiortc_hooks.set_host_addresses(["127.0.0.1", "::1"])
    # Demo users may be called back: they hold a temporary permission, answer after 2 s,
    # press 1 and hang up after a while (so an outbound call shows something happening).
    sim = CloudApiSimulator(app_secret=config.whatsapp.app_secret.reveal(),
                            access_token=config.whatsapp.access_token.reveal(),
                            webhook_url=f"http://127.0.0.1:{config.http.port}/webhook",
                            port=sim_port,
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
    try:
        await asterisk.start()
    except LocalAsteriskError as exc:
        raise DemoError(f"Asterisk did not start: {exc}") from None
    # The phone names the prompts it hears, matched against this Asterisk's sound files
    # (decoded once in a thread, then cached on disk).
    sim.prompts = library_for(asterisk.sounds_dir())
    loading = asyncio.ensure_future(asyncio.to_thread(sim.prompts.load))
    try:
        try:
            await sim.start()
            await gateway.start()
        except OSError as exc:  # a port taken between our check and the bind
            raise DemoError(f"{exc.strerror or exc}; choose other ports with --ami-port/"
                            "--http-port/--sim-port") from None
        exports = export_lines(path, gateway.url, sim.base_url)
        if call_script:
            print(f"Ready (gateway {gateway.url}, simulator {sim.base_url}, Asterisk AMI "
                  f"127.0.0.1:{ami}). Placing one call into [from-whatsapp] with the script "
                  f"{call_script!r}:", flush=True)
            call = await sim.place_call(from_wa_id="15550002222", profile_name="Test User")
            result = await run_script(call, parse_script(call_script))
            await call.wait_ended(30)
            await call.phone.finish_listening()
            call.transcript.close()
            for task in list(printers):  # the transcript's last lines, before the summary
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            for line in call.summary().lines():
                print(line, flush=True)
            print("result: PASS" if result.ok else f"result: FAIL: {result.reason}", flush=True)
            return 0 if result.ok else 1
        print(f"""
Ready. Asterisk runs asterisk-conf/ (AMI 127.0.0.1:{ami}), the WhatsApp
simulator stands in for Meta on {sim.base_url}, the gateway listens on {gateway.url}
(config: {path}; metrics: {gateway.url}/metrics).

In another terminal, first:

{exports}

Place a simulated WhatsApp call:

  .venv/bin/whatsapp-gateway sim call --sim-url {sim.base_url} --from 15550002222 \\
      --name "Test User" --script "{EXAMPLE_SCRIPT}"

The caller hears the IVR of asterisk-conf/extensions.conf [from-whatsapp]: 3 reads a code and
says it back. Then: `whatsapp-gateway calls list -c {path}` (the call records) and
`whatsapp-gateway check-config -c {path} --asterisk` (the dialplan checks).

Call a WhatsApp user from a CRM (the simulated user answers, presses 1, hangs up):

  curl -s -X POST {gateway.url}/v1/calls -H "Authorization: Bearer demo-api-token" \\
      -d '{{"to": "+15550003333", "context": "from-whatsapp"}}'

or from the dialplan, as an agent would (asterisk-conf [to-whatsapp]):

  chroot {asterisk.root} asterisk -C {asterisk.conf_path} \\
      -rx "channel originate Local/+15550003333@to-whatsapp application Echo"

Press Ctrl-C here to stop everything.
""", flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError):
                loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        return 0
    finally:
        print("Stopping...", flush=True)
        loading.cancel()
        await gateway.stop()
        await sim.close()
        for task in list(printers):
            task.cancel()
        await asterisk.stop()
