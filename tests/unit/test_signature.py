from gateway.whatsapp.signature import sign, signature_ok

SECRET = "0123456789abcdef0123456789abcdef"
BODY = b'{"object":"whatsapp_business_account","entry":[{"id":"102290000000001","changes":[]}]}'


def test_worked_example_from_the_reference():
    expected = "sha256=760083ea9b38e830fd5fbd6635552d80a82cde4f4108611a5cc1937972d07eef"
    assert sign(SECRET, BODY) == expected
    assert signature_ok(SECRET, BODY, expected)


def test_trailing_newline_changes_the_signature():
    assert sign(SECRET, BODY + b"\n") == \
        "sha256=66b88193c96159266b524dd09e4c20e19a5d777135cd95bc04347b138bf92b3f"
    assert not signature_ok(SECRET, BODY + b"\n", sign(SECRET, BODY))


def test_missing_malformed_or_wrong_key():
    good = sign(SECRET, BODY)
    assert not signature_ok(SECRET, BODY, None)
    assert not signature_ok(SECRET, BODY, "")
    assert not signature_ok(SECRET, BODY, good[len("sha256="):])  # no prefix
    assert not signature_ok("other", BODY, good)
    assert not signature_ok("", BODY, sign("", BODY))  # no secret configured: refuse all
    assert signature_ok(SECRET, BODY, good.upper().replace("SHA256=", "sha256="))
