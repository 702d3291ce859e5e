"""Instance ids: in the config, in every channel id, and what the orphan sweep spares."""

from __future__ import annotations

import pytest

from gateway.config import ConfigError, parse_config
from gateway.instance import (
    Neighbours,
    channel_instance,
    derive_instance_id,
    new_channel_id,
    sweep_spares,
)
from gateway.logs import config_secrets
from tests.unit.test_config import ENV, GOOD


def config(**sections: object):
    return parse_config({**GOOD, **sections}, env={**ENV, "PGPASS": "pg-s3cret"})


def problems(**sections: object) -> list[str]:
    with pytest.raises(ConfigError) as info:
        config(**sections)
    return info.value.problems


def test_the_derived_id_is_readable_stable_and_differs_per_listen_address() -> None:
    one = derive_instance_id("0.0.0.0:8080", hostname="GW-Box.example.com")
    assert one.startswith("gw-box-") and len(one) == len("gw-box-") + 6
    assert one == derive_instance_id("0.0.0.0:8080", hostname="GW-Box.example.com")
    assert one != derive_instance_id("0.0.0.0:8081", hostname="GW-Box.example.com")
    assert config().gateway.instance_id == config().gateway.instance_id


def test_instance_id_from_the_config_and_bad_ones_named_by_key() -> None:
    assert config(gateway={"instance_id": "gw-a"}).gateway.instance_id == "gw-a"
    for bad in ("GW_A", "-a", "a" * 33, "a.b"):
        assert any(p.startswith("gateway.instance_id:")
                   for p in problems(gateway={"instance_id": bad})), bad
    assert any(p.startswith("gateway.colour:") for p in problems(gateway={"colour": 1}))


def test_heartbeat_and_gone_after_default_to_10_and_60_s_and_bad_ones_named_by_key() -> None:
    assert (config().gateway.heartbeat_s, config().gateway.gone_after_s) == (10.0, 60.0)
    quick = config(gateway={"heartbeat_s": 0.5, "gone_after_s": 3}).gateway
    assert (quick.heartbeat_s, quick.gone_after_s) == (0.5, 3.0)
    for key, bad in (("heartbeat_s", 0), ("heartbeat_s", "often"), ("gone_after_s", -1)):
        assert any(p.startswith(f"gateway.{key}:")
                   for p in problems(gateway={key: bad})), (key, bad)
    # gone after less than three beats: one late write would make a live gateway look gone
    (problem,) = problems(gateway={"heartbeat_s": 5, "gone_after_s": 12})
    assert problem.startswith("gateway.gone_after_s:") and "15 s" in problem, problem


def test_store_url_is_checked_at_start_and_its_password_is_a_secret() -> None:
    cfg = config(store={"url": "postgresql://gw:${PGPASS}@db.internal:5432/gateway"})
    assert cfg.store.calls_at == "postgresql://gw:pg-s3cret@db.internal:5432/gateway"
    assert cfg.store.path == "var/gateway.sqlite3"  # the pid file goes beside it
    assert "pg-s3cret" not in repr(cfg)
    assert "pg-s3cret" in [s.reveal() for s in config_secrets(cfg)]
    assert config().store.calls_at == "var/gateway.sqlite3"
    assert any(p.startswith("store.url: must be a postgresql://")
               for p in problems(store={"url": "mysql://db/gw"}))
    assert any(p.startswith("store.url: not a valid PostgreSQL URL")
               for p in problems(store={"url": "postgresql://db/gw?no_such_option=1"}))


def test_channel_ids_carry_the_instance() -> None:
    channel = new_channel_id("gw-a")
    assert channel.startswith("wa-gw-a-") and len(channel) == len("wa-gw-a-") + 32
    assert channel_instance(channel) == "gw-a"
    assert channel_instance("wa-" + "0" * 32) is None  # before instance ids: nobody's
    assert channel_instance("1700000000.12") is None


def test_the_sweep_spares_live_calls_and_every_other_instances_channels() -> None:
    live = new_channel_id("gw-a")
    spared = sweep_spares("gw-a", lambda uid: uid == live)
    assert spared(live)
    assert spared(new_channel_id("gw-b"))  # another gateway may be running it
    assert not spared(new_channel_id("gw-a"))  # ours, and no call owns it: an orphan
    assert not spared("wa-" + "f" * 32)  # an old gateway's: swept as before


def test_a_gateway_silent_too_long_is_gone_and_its_channels_are_swept() -> None:
    neighbours = Neighbours("gw-a", gone_after_s=60.0)
    neighbours.shared = True
    # gw-a is this gateway: never gone, whatever its row says
    assert neighbours.update({"gw-a": 900.0, "gw-b": 990.0, "gw-c": 930.0},
                             now=1000.0) == {"gw-c"}
    assert neighbours.update({"gw-b": 1010.0, "gw-c": 930.0}, now=1020.0) == set()  # no news
    assert neighbours.update({"gw-b": 1010.0, "gw-c": 930.0}, now=1080.0) == {"gw-b"}
    assert neighbours.gone() == {"gw-b", "gw-c"}
    spared = sweep_spares("gw-a", lambda uid: False, neighbours.spares)
    assert not spared(new_channel_id("gw-c"))  # gone: nobody else will hang it up
    assert spared(new_channel_id("gw-z"))  # not heard of yet: it may have just started
    neighbours.update({"gw-b": 1085.0, "gw-c": 930.0}, now=1090.0)  # gw-b is back
    assert spared(new_channel_id("gw-b"))


def test_a_draining_gateway_may_pass_new_calls_to_the_others_that_beat_recently() -> None:
    neighbours = Neighbours("gw-a", gone_after_s=60.0)
    neighbours.update({"gw-a": 1000.0, "gw-b": 990.0, "gw-c": 930.0}, now=1000.0)
    assert neighbours.alive_others() == {"gw-b"}  # never itself, never a gone one


def test_alone_on_sqlite_a_gateway_sweeps_every_channel_of_ours_as_before() -> None:
    neighbours = Neighbours("gw-a")  # shared stays False: the store is an SQLite file
    neighbours.update({"gw-a": 1000.0, "gw-b": 1000.0}, now=1000.0)
    spared = sweep_spares("gw-a", lambda uid: False, neighbours.spares)
    assert not spared(new_channel_id("gw-b"))  # an earlier run under another id
