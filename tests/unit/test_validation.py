import pytest

from cluster.router.validation import InvalidRequest, validate


def ok(**kw):
    base = {"model": "m", "prompt": "hi"}
    base.update(kw)
    return validate(**base)


def test_defaults_are_filled_and_a_request_id_assigned():
    r = ok()
    assert r.max_tokens == 256 and r.temperature == 1.0 and r.top_p == 1.0 and r.top_k == -1
    assert len(r.request_id) == 32


@pytest.mark.parametrize(
    ("kw", "param"),
    [
        ({"temperature": -0.1}, "temperature"),
        ({"temperature": 2.5}, "temperature"),
        ({"temperature": float("nan")}, "temperature"),
        ({"temperature": "hot"}, "temperature"),
        ({"top_p": 0}, "top_p"),
        ({"top_p": 1.01}, "top_p"),
        ({"top_k": -5}, "top_k"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"max_tokens": 1.5}, "max_tokens"),
        ({"max_tokens": True}, "max_tokens"),
        ({"seed": -1}, "seed"),
        ({"stop": 7}, "stop"),
        ({"stop": ["x"] * 17}, "stop"),
        ({"stop": [""]}, "stop"),
        ({"prompt": ""}, "prompt"),
        ({"prompt": "a\x00b"}, "prompt"),
        ({"prompt": "bad \ud800 surrogate"}, "prompt"),
        ({"prompt": None, "messages": []}, "messages"),
        ({"prompt": None, "messages": [{"role": "wizard", "content": "x"}]}, "messages[0].role"),
        ({"prompt": None, "messages": [{"role": "user", "content": [{"type": "image_url"}]}]}, "messages[0].content[0]"),
        ({"messages": [{"role": "user", "content": "x"}]}, "prompt"),
        ({"model": ""}, "model"),
        ({"request_id": "x" * 200}, "request_id"),
    ],
)
def test_each_bad_parameter_is_rejected_with_its_name(kw, param):
    with pytest.raises(InvalidRequest) as err:
        ok(**kw)
    assert err.value.param == param
    assert str(err.value).startswith(param + ":")


def test_chat_content_parts_are_joined_and_top_k_zero_means_disabled():
    r = validate(model="m", messages=[{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}], top_k=0)
    assert r.messages[0].content == "ab"
    assert r.top_k == -1


def test_a_single_stop_string_becomes_a_list_and_unicode_is_normalised():
    r = ok(stop="END", prompt="cafe\u0301")
    assert r.stop == ["END"]
    assert r.prompt == "caf\u00e9"
