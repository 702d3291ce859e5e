from gateway.calls.base import caller_id


def test_caller_id_is_presented_like_a_trunk_call():
    assert caller_id("Maria", "5511999990000") == '"Maria" <+5511999990000>'
    assert caller_id("", "+15550002222") == "<+15550002222>"


def test_profile_names_cannot_break_the_caller_id():
    assert caller_id('Maria "Mia" <x>\nSilva', "5511999990000") == \
        '"Maria \\"Mia\\" x Silva" <+5511999990000>'
    assert caller_id("back\\slash", "1") == '"back\\\\slash" <+1>'
