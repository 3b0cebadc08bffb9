"""Over-long request targets against the real ASGI server (daphne, as `make run` starts it): every length
gets an answer (a 414, JSON under /api/, a page elsewhere) where daphne used to drop the connection past
16 KiB without a word, or answer a bare 400 just below it."""

import http.client
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from aggregation.demo import free_port, spawn, stop


@pytest.fixture(scope="module")
def port(tmp_path_factory) -> Iterator[int]:
    """daphne serving the project in a data folder of its own (these requests never reach the database)."""
    data: Path = tmp_path_factory.mktemp("daphne")
    number = free_port()
    process = spawn(["daphne", "-b", "127.0.0.1", "-p", str(number), "consortium.asgi:application"],
                    data / "daphne.log", CONSORTIUM_DATA_DIR=str(data), REDIS_URL="",
                    DATABASE_URL=f"sqlite:///{data / 'daphne.sqlite3'}")
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if get(number, "/api/schema/")[0] == 200:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, (data / "daphne.log").read_text()[-2000:]
            time.sleep(0.3)
        yield number
    finally:
        stop([process])


def get(port: int, target: str, headers: dict[str, str] | None = None) -> tuple[int, str, bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        connection.request("GET", target, headers=headers or {})
        response = connection.getresponse()
        return response.status, response.getheader("Content-Type") or "", response.read()
    finally:
        connection.close()


# 10 KB: daphne passes it on; 16,300: daphne read the line but used to refuse line plus headers with a bare
# 400; 20 KB and 200 KB: longer than daphne reads a line, where it used to drop the connection.
LENGTHS = [10_000, 16_300, 20_000, 200_000]


@pytest.mark.parametrize("length", LENGTHS)
def test_it_answers_an_over_long_api_query_string_with_a_json_414(port, length):
    status, content_type, body = get(port, "/api/studies/?filter=" + "a" * length,
                                     {"Cookie": "sessionid=" + "b" * 300, "User-Agent": "x" * 200})
    assert (status, content_type) == (414, "application/json")
    assert b'"error": "uri_too_long"' in body


@pytest.mark.parametrize("length", LENGTHS)
def test_it_answers_an_over_long_page_url_with_an_html_414(port, length):
    status, content_type, body = get(port, "/studies/?q=" + "a" * length)
    assert status == 414 and content_type.startswith("text/html")
    assert b"<h1>URL too long</h1>" in body


def test_it_answers_an_over_long_header_line_with_431(port):
    status, content_type, body = get(port, "/api/studies/", {"X-Padding": "a" * 20_000})
    assert (status, content_type) == (431, "application/json")
    assert b'"error": "header_too_long"' in body


def test_it_still_answers_a_normal_request(port):
    assert get(port, "/api/studies/?" + "a=1")[0] == 401  # anonymous: the API answers as usual
