"""What the router itself reads of a request body, and what it refuses before any replica sees it."""

import json

import pytest

from cluster.router.validation import InvalidRequest, parse_body, relay_request


def relay(body, endpoint="chat", **kw):
    return relay_request(endpoint, body, models=["m"], **kw)


def test_the_router_reads_only_model_stream_budget_prompt_and_session_and_leaves_sampling_unset():
    body = parse_body(b'{"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": true, "user": "u1"}')
    r = relay(body)
    assert (r.model, r.stream, r.n, r.session_id, r.routing_text) == ("m", True, 1, "u1", "hi")
    assert r.max_tokens == 256  # the router's budget estimate, never sent to the engine
    sent = json.loads(r.encoded_body())
    assert "temperature" not in sent and "max_tokens" not in sent and "top_p" not in sent
    assert sent["request_id"] == r.request_id and len(r.request_id) == 32


@pytest.mark.parametrize("rid", ["abc-123.4:5_6", 'quote"back\\slash', "\u00e9t\u00e9", "a b", "x/y+z"])
def test_the_clients_own_bytes_are_relayed_with_any_request_id_spliced_in_as_valid_json(rid):
    raw = b' {"model": "m", "messages": [{"role": "user", "content": "hi"}], "seed": 7}'
    r = relay(parse_body(raw), request_id=rid, raw=raw)
    assert r.raw is not None  # the splice path, not a second encoding
    assert json.loads(r.encoded_body()) == {"request_id": rid, **json.loads(raw)}


def test_the_budget_is_the_requests_own_limit_times_n():
    assert relay({"model": "m", "messages": [], "max_completion_tokens": 9, "max_tokens": 3, "n": 2}).max_tokens == 18
    assert relay({"model": "m", "prompt": "x", "max_tokens": 5}, "completions").max_tokens == 5


def test_the_only_served_model_is_taken_when_the_body_names_none_as_vllm_does():
    assert relay({"messages": []}).model == "m"
    with pytest.raises(InvalidRequest) as err:
        relay_request("chat", {"messages": []}, models=["a", "b"])
    assert err.value.param == "model"


def test_a_clients_request_id_becomes_the_response_id_for_every_replica():
    assert relay({"model": "m", "messages": []}, request_id="abc").body["request_id"] == "abc"
    assert relay({"model": "m", "messages": [], "request_id": "mine"}, request_id="abc").request_id == "mine"


@pytest.mark.parametrize(
    ("raw", "param", "why"),
    [
        (b"\xff\xfe{}", "body", "UTF-8"),
        (b"{not json", "body", "not valid JSON"),
        (b"[1, 2]", "body", "JSON object"),
        (b'{"model": "m", "x": ' + b"[" * 5000 + b"]" * 5000 + b"}", "body", "nested too deep"),
        (b'{"model": "m", "x": ' + b"[" * 100 + b"]" * 100 + b"}", "x", "nested deeper"),
        (b'{"model": "m", "temperature": 1e400}', "temperature", "finite"),
        (b'{"model": "m", "top_p": ' + b"1" * 400 + b"}", "top_p", "finite"),
        (b'{"model": "m", "top_p": -' + b"1" * 309 + b"}", "top_p", "finite"),
        (b'{"model": "m", "seed": ' + b"1" * 5000 + b"}", "seed", "finite"),
        (b'{"model": "m", "temperature": NaN}', "body", "NaN"),
        (b'{"model": "m", "temperature": -Infinity}', "body", "Infinity"),
        (b'{"model": "m", "messages": [{"role": "user", "content": "a\\ud800b"}]}', "messages[0].content", "surrogate"),
        (b'{"model": "m", "stream": "yes"}', "stream", "boolean"),
        (b'{"model": 7}', "model", "required"),
    ],
)
def test_a_body_that_would_break_a_parser_further_on_is_refused_naming_the_field(raw, param, why):
    with pytest.raises(InvalidRequest) as err:
        relay(parse_body(raw))
    assert err.value.param == param and why in str(err.value)
    assert str(err.value).startswith(param + ":")


def test_the_largest_numbers_a_float_holds_are_accepted_with_their_values():
    big = int("9" * 308)
    body = parse_body(b'{"model": "m", "seed": %d, "logit_bias": {"1": -%d}, "top_p": 1.7e308}' % (big, big))
    assert body["seed"] == big and body["logit_bias"]["1"] == -big and body["top_p"] == 1.7e308


def test_an_unknown_routing_policy_header_is_refused_by_name():
    with pytest.raises(InvalidRequest) as err:
        relay({"model": "m", "messages": []}, routing_policy="nope")
    assert err.value.param == "x-routing-policy"
