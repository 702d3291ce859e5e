import pytest
import yaml

from gateway.config import ConfigError, Secret, load_config, parse_config

GOOD = {
    "whatsapp": {"graph_url": "https://graph.facebook.com/v23.0",
                 "access_token": "${WA_ACCESS_TOKEN}", "app_secret": "${WA_APP_SECRET}",
                 "verify_token": "${WA_VERIFY_TOKEN:-default-verify}"},
    "numbers": [{"phone_number_id": "106540000000002", "context": "from-whatsapp"}],
    "asterisk": {"ami": {"username": "gateway", "secret": "${AMI_SECRET}"}},
}
ENV = {"WA_ACCESS_TOKEN": "tok-123", "WA_APP_SECRET": "sec-456", "AMI_SECRET": "ami-789"}


def problems(data, env=ENV):
    with pytest.raises(ConfigError) as info:
        parse_config(data, env=env)
    return info.value.problems


def test_good_config_and_defaults():
    cfg = parse_config(GOOD, env=ENV)
    assert cfg.whatsapp.access_token.reveal() == "tok-123"
    assert cfg.whatsapp.verify_token.reveal() == "default-verify"
    assert cfg.asterisk.codec == "g722" and cfg.asterisk.ami.port == 5038
    assert cfg.numbers[0].extension == "s" and cfg.numbers[0].max_calls == 100
    assert cfg.media.rtp_ports.first == 40000 and len(cfg.media.rtp_ports) == 1000
    assert cfg.number("106540000000002").context == "from-whatsapp"
    assert cfg.number("999") is None


def test_secrets_never_show_in_repr():
    cfg = parse_config(GOOD, env=ENV)
    text = repr(cfg) + str(cfg)
    for secret in ENV.values():
        assert secret not in text
    assert repr(Secret("x")) == "Secret('***')"


def test_missing_env_var_names_key_and_variable():
    env = {k: v for k, v in ENV.items() if k != "WA_APP_SECRET"}
    expected = "whatsapp.app_secret: environment variable WA_APP_SECRET is not set"
    assert expected in problems(GOOD, env)


def test_every_error_is_reported_with_its_key():
    bad = {
        "whatsapp": {"graph_url": "ftp://x", "access_token": "a", "app_secret": "b",
                     "verify_token": "c", "typo_key": 1},
        "numbers": [{"phone_number_id": "abc", "context": "x", "max_calls": 0},
                    {"context": "y"}],
        "asterisk": {"ami": {"username": "u", "secret": "s", "port": "http"}, "codec": "opus"},
        "media": {"rtp_ports": "50000-40000", "public_ip": "not-an-ip"},
        "http": {"listen": "nowhere"},
    }
    found = "\n".join(problems(bad))
    for key in ("whatsapp.graph_url", "whatsapp.typo_key", "numbers[0].phone_number_id",
                "numbers[0].max_calls", "numbers[1].phone_number_id", "asterisk.ami.port",
                "asterisk.codec", "media.rtp_ports", "media.public_ip", "http.listen"):
        assert key in found, key


def test_duplicate_numbers_and_empty_numbers():
    dup = dict(GOOD, numbers=GOOD["numbers"] * 2)
    assert any("listed twice" in p for p in problems(dup))
    assert any(p.startswith("numbers:") for p in problems(dict(GOOD, numbers=[])))


def test_load_config_file_errors(tmp_path):
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("whatsapp: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    good = tmp_path / "good.yaml"
    good.write_text(yaml.safe_dump(GOOD))
    assert load_config(good, env=ENV).source == str(good)


def test_accountcode_per_number_is_validated():
    data = {**GOOD, "numbers": [{**GOOD["numbers"][0], "accountcode": "wa-sales"}]}
    assert parse_config(data, env=ENV).numbers[0].accountcode == "wa-sales"
    assert parse_config(GOOD, env=ENV).numbers[0].accountcode is None
    for bad in ("two words", "a,b", 'q"uote', "x" * 80):
        data = {**GOOD, "numbers": [{**GOOD["numbers"][0], "accountcode": bad}]}
        (problem,) = problems(data)
        assert problem.startswith("numbers[0].accountcode: must be 1-79 characters"), problem


def test_overlapping_rtp_and_webrtc_ports_are_refused_naming_both_keys():
    data = {**GOOD, "media": {"rtp_ports": "40000-40999", "webrtc_ports": "40900-41999"}}
    (problem,) = problems(data)
    assert problem.startswith("media.rtp_ports:") and "media.webrtc_ports" in problem
    assert "40900-40999" in problem
    data = {**GOOD, "media": {"rtp_ports": "40000-40999", "webrtc_ports": "41000-41999"}}
    assert parse_config(data, env=ENV).media.webrtc_ports.first == 41000


def test_operations_keys_and_their_defaults():
    cfg = parse_config(GOOD, env=ENV)
    assert cfg.asterisk.ami_down_grace_s == 10.0 and cfg.service.shutdown_grace_s == 30.0
    cfg = parse_config({**GOOD, "asterisk": {**GOOD["asterisk"], "ami_down_grace": 3},
                        "service": {"shutdown_grace": 0}}, env=ENV)
    assert cfg.asterisk.ami_down_grace_s == 3.0 and cfg.service.shutdown_grace_s == 0.0
    assert str(cfg.pid_file) == "var/gateway.pid"  # beside the store
    assert problems({**GOOD, "service": {"shutdown_grace": -1, "drain": 1}}) == [
        "service.drain: unknown key (typo?)",
        "service.shutdown_grace: must be at least 0.0, got -1.0"]


def test_a_reload_applies_the_live_keys_and_keeps_the_rest():
    old = parse_config(GOOD, env=ENV)
    new = parse_config({
        **GOOD,
        "numbers": [*GOOD["numbers"], {"phone_number_id": "106540000000003", "context": "x",
                                       "max_calls": 2}],
        "api": {"tokens": ["t2"]},
        "asterisk": {"ami": {"username": "gateway", "secret": "other", "port": 5040}},
        "media": {"rtp_ports": "41000-41009"}, "service": {"shutdown_grace": 5}},
        env={**ENV, "WA_ACCESS_TOKEN": "tok-rotated"})
    applied, restart = old.reloaded(new)
    assert [n.phone_number_id for n in applied.numbers] == ["106540000000002",
                                                            "106540000000003"]
    assert applied.api.tokens == (Secret("t2"),) and applied.service.shutdown_grace_s == 5
    assert applied.whatsapp.access_token.reveal() == "tok-rotated"
    assert restart == ["asterisk.ami", "media"]
    assert applied.asterisk.ami == old.asterisk.ami and applied.media == old.media


SERVERS = [{"name": "pbx-a", "host": "10.0.0.1", "username": "gw", "secret": "${AMI_SECRET}"},
           {"host": "10.0.0.2", "port": 5039, "username": "gw", "secret": "s2"}]


def test_asterisk_servers_list_and_policy():
    cfg = parse_config(dict(GOOD, asterisk={"servers": SERVERS, "policy": "round_robin"}),
                       env=ENV)
    a, b = cfg.asterisk.all_servers
    assert cfg.asterisk.ami is a and cfg.asterisk.policy == "round_robin"
    assert (a.label, a.host, a.port, a.secret.reveal()) == ("pbx-a", "10.0.0.1", 5038, "ami-789")
    assert (b.label, b.port) == ("10.0.0.2:5039", 5039)  # unnamed: host:port
    one = parse_config(GOOD, env=ENV).asterisk
    assert one.all_servers == (one.ami,) and one.policy == "failover"


def test_asterisk_servers_problems_name_their_keys():
    both = dict(GOOD, asterisk={"ami": GOOD["asterisk"]["ami"], "servers": SERVERS})
    assert any(p.startswith("asterisk:") and "asterisk.ami" in p and "asterisk.servers" in p
               for p in problems(both))
    found = "\n".join(problems(dict(GOOD, asterisk={
        "servers": [SERVERS[0], {"host": "x", "username": "gw", "port": 0, "typo": 1},
                    dict(SERVERS[0], host="10.0.0.3")],
        "policy": "random"})))
    for key in ("asterisk.servers[1].port", "asterisk.servers[1].typo",
                "asterisk.servers[1].secret", "asterisk.policy", "named 'pbx-a'"):
        assert key in found, key
    assert any(p.startswith("asterisk.servers:") for p in
               problems(dict(GOOD, asterisk={"servers": []})))
    assert any(p.startswith("asterisk.policy:") for p in
               problems(dict(GOOD, asterisk=dict(GOOD["asterisk"], policy="failover"))))


def test_secrets_of_every_server_are_redacted():
    from gateway.logs import config_secrets

    cfg = parse_config(dict(GOOD, asterisk={"servers": SERVERS}), env=ENV)
    assert {"ami-789", "s2"} <= {s.reveal() for s in config_secrets(cfg)}
