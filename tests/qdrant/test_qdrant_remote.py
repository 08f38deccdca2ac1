"""The remote (server) path, with what runs here: no Qdrant server binary is available, so
no server is faked either. Tested: URL and option checks, an unreachable server (a closed
loopback port) and a silent one (a socket that never answers) fail fast with a clear
error that never contains the API key, and the retry / backoff logic on its own."""

import logging
import random
import socket
import time
import traceback
import warnings

import httpx
import pytest
from qdrant_client.http.exceptions import ResponseHandlingException, UnexpectedResponse

from qdrant_plugin import MultiFieldIndex, QdrantUnavailableError
from qdrant_plugin.backends import backend_kind
from qdrant_plugin.backends.client import ClientBackend, parse_server_url, safe_url
from qdrant_plugin.retry import RetryPolicy, call_with_retry, is_transient

KEY = "sk-test-7f3a9c1e-DO-NOT-LEAK"
FIELDS = {"title": 8, "image": 8}


def _closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


@pytest.mark.parametrize("loc, kind", [
    ("./store", "edge"), ("/abs/dir", "edge"), (":memory:", "local"),
    ("http://localhost:6333", "remote"), ("https://xyz.cloud.qdrant.io:6333", "remote"),
])
def test_backend_is_chosen_from_location(loc, kind):
    assert backend_kind(loc) == kind


@pytest.mark.parametrize("url, expect", [
    ("http://localhost:6333", {"https": False, "host": "localhost", "port": 6333, "prefix": None}),
    ("https://q.example.com", {"https": True, "host": "q.example.com", "port": 6333, "prefix": None}),
    ("https://q.example.com:443/qdrant/", {"https": True, "host": "q.example.com", "port": 443, "prefix": "/qdrant"}),
])
def test_server_url_parsing(url, expect):
    got = parse_server_url(url)
    assert {k: got[k] for k in expect} == expect


@pytest.mark.parametrize("url, match", [
    ("http://user:" + KEY + "@host:6333", "credentials in api_key"),
    ("http://:6333", "expected http"),
    ("http://host:99999", "invalid port"),
    ("http://host:6333/?api-key=x", "unexpected query"),
])
def test_bad_server_urls(url, match):
    with pytest.raises(ValueError, match=match) as e:
        parse_server_url(url)
    assert KEY not in str(e.value)
    assert KEY not in safe_url("http://user:" + KEY + "@host:6333")


@pytest.mark.parametrize("kwargs, match", [
    ({"timeout": 0}, "timeout: expected seconds > 0"),
    ({"retries": -1}, "retries: expected an int >= 0"),
    ({"backoff": -0.5}, "backoff: expected seconds >= 0"),
    ({"api_key": ""}, "api_key: expected a non-empty string"),
])
def test_bad_remote_options(kwargs, match):
    with pytest.raises(ValueError, match=match):
        MultiFieldIndex("http://127.0.0.1:1", "c", FIELDS, **kwargs)


def test_unreachable_server_fails_fast_without_leaking_the_key(caplog):
    url = f"http://127.0.0.1:{_closed_port()}"
    caplog.set_level(logging.DEBUG)
    t = time.monotonic()
    with pytest.raises(QdrantUnavailableError) as e:
        MultiFieldIndex(url, "c", FIELDS, api_key=KEY, timeout=2, retries=2, backoff=0.05)
    elapsed = time.monotonic() - t
    assert elapsed < 10
    msg = str(e.value)
    assert url in msg and "after 3 attempt(s)" in msg and "Connection refused" in msg
    assert isinstance(e.value, ConnectionError)
    full = "".join(traceback.format_exception(e.value))
    assert KEY not in full and KEY not in caplog.text
    assert caplog.text.count("retrying in") == 2  # two retries were logged, then it gave up


def test_silent_server_times_out():
    # A socket that accepts the TCP handshake (backlog) but never answers.
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)
    url = f"http://127.0.0.1:{srv.getsockname()[1]}"
    try:
        t = time.monotonic()
        with pytest.raises(QdrantUnavailableError, match="Timeout|timed out") as e:
            MultiFieldIndex(url, "c", FIELDS, api_key=KEY, timeout=1, retries=0)
        assert time.monotonic() - t < 8
        assert KEY not in str(e.value)
    finally:
        srv.close()


def test_client_configuration_and_describe():
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        b = ClientBackend("http://qdrant.example.com:6333", "c", api_key=KEY, timeout=2.5)
    assert any("clear text" in str(x.message) for x in w)
    assert b.kind == "remote" and KEY not in b.describe()
    assert b.describe() == "Qdrant server http://qdrant.example.com:6333"
    remote = b.client._client
    assert remote.rest_uri == "http://qdrant.example.com:6333"
    assert remote._timeout == 3  # qdrant-client takes whole seconds: rounded up
    assert remote._rest_headers["api-key"] == KEY  # sent as a header, nowhere else
    b.close()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # https with a key: no warning
        b = ClientBackend("https://qdrant.example.com", "c", api_key=KEY)
    assert b.client._client.rest_uri == "https://qdrant.example.com:6333"
    b.close()


def test_scrubbing_of_error_text():
    b = ClientBackend("https://qdrant.example.com", "c", api_key=KEY, retry=RetryPolicy(attempts=1))

    def boom():
        raise UnexpectedResponse(400, "Bad Request", f"bad key {KEY}".encode(), httpx.Headers())

    with pytest.raises(RuntimeError) as e:
        b._call("do a thing", boom)
    assert KEY not in str(e.value) and "***" in str(e.value) and "refused to do a thing" in str(e.value)
    b.close()


# ---------------------------------------------------------------------------------------
# retry and backoff
# ---------------------------------------------------------------------------------------

def test_backoff_delays_double_and_cap():
    p = RetryPolicy(attempts=6, base_delay=0.5, max_delay=3.0)
    assert p.delays(jitter=False) == [0.5, 1.0, 2.0, 3.0, 3.0]
    rng = random.Random(0)
    for d, nominal in zip(p.delays(rng=rng), p.delays(jitter=False)):
        assert 0.5 * nominal <= d <= nominal
    with pytest.raises(ValueError, match="retries"):
        RetryPolicy(attempts=0)


@pytest.mark.parametrize("exc, transient", [
    (ResponseHandlingException(httpx.ConnectError("refused")), True),
    (UnexpectedResponse(503, "Service Unavailable", b"", httpx.Headers()), True),
    (UnexpectedResponse(429, "Too Many Requests", b"", httpx.Headers()), True),
    (UnexpectedResponse(400, "Bad Request", b"", httpx.Headers()), False),
    (UnexpectedResponse(404, "Not Found", b"", httpx.Headers()), False),
    (httpx.ReadTimeout("slow"), True),
    (ConnectionResetError(), True),
    (ValueError("bad"), False),
])
def test_which_errors_are_retried(exc, transient):
    assert is_transient(exc) is transient


def _flaky(failures, exc):
    calls = {"n": 0}

    def fn():
        calls["n"] += 1
        if calls["n"] <= failures:
            raise exc
        return "ok"

    return fn, calls


def test_transient_failures_are_retried_then_succeed():
    fn, calls = _flaky(2, ResponseHandlingException(httpx.ConnectError("refused")))
    slept = []
    out = call_with_retry(fn, RetryPolicy(attempts=4, base_delay=0.2), "op", lambda e, n: RuntimeError(),
                          sleep=slept.append)
    assert out == "ok" and calls["n"] == 3
    assert len(slept) == 2 and 0.1 <= slept[0] <= 0.2 and 0.2 <= slept[1] <= 0.4


def test_permanent_failures_are_not_retried():
    fn, calls = _flaky(5, UnexpectedResponse(400, "Bad Request", b"", httpx.Headers()))
    slept = []
    with pytest.raises(UnexpectedResponse):
        call_with_retry(fn, RetryPolicy(attempts=4), "op", lambda e, n: RuntimeError(), sleep=slept.append)
    assert calls["n"] == 1 and slept == []


def test_giving_up_after_the_last_attempt():
    fn, calls = _flaky(10, ResponseHandlingException(httpx.ConnectError("refused")))
    slept = []
    with pytest.raises(QdrantUnavailableError, match="gave up after 3"):
        call_with_retry(fn, RetryPolicy(attempts=3, base_delay=0.01), "op",
                        lambda e, n: QdrantUnavailableError(f"gave up after {n}"), sleep=slept.append)
    assert calls["n"] == 3 and len(slept) == 2
