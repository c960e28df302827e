"""``poolserve run-batch``: the server's own answers, line by line, in input order.

Run in-process through ``poolserve.cli.main`` (a model loads per run; tiny models keep
that well under a second). The live servers these answers are compared with serve the
same model folders, so the answers may differ only in what each request makes anew
(ids, timestamps) and in float rounding from different batching.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import logging
import math
import sys
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests

from poolserve.batch import run_batch_cli
from poolserve.batch.run_batch import EngineDied, LineError, format_line, parse_line, run_ordered
from poolserve.cli import main
from tests.conftest import TEST_BACKEND, make_context, serve_in_thread

QUERY = "which city has the most people"
DOCS = ["many people live in large cities", "the cat sits on the mat", "Paris is big"]
# What each request makes anew: compared for presence, not value.
FRESH = {"id", "created"}


@pytest.fixture(scope="module")
def st_model(tiny: Callable[..., Path]) -> Path:
    return tiny("st")


@pytest.fixture(scope="module")
def cross_model(tiny: Callable[..., Path]) -> Path:
    return tiny("cross", "bert")


def line(custom_id: str, url: str, body: Any, method: str = "POST") -> str:
    return json.dumps({"custom_id": custom_id, "method": method, "url": url, "body": body})


def run_batch(model: Path, inp: Path | str, out: Path | str, *extra: str) -> int:
    argv = ["run-batch", "-i", str(inp), "-o", str(out), str(model), "--dtype", "float32"]
    return main([*argv, "--backend", TEST_BACKEND, *extra])


def read_out(path: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines()]


def same(a: Any, b: Any, where: str = "body") -> None:
    """``a`` equals ``b`` but for FRESH keys (present in both) and float rounding."""
    if isinstance(a, dict) and isinstance(b, dict):
        assert set(a) == set(b), where
        for key in a:
            if key not in FRESH:
                same(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, list) and isinstance(b, list):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            same(x, y, f"{where}[{i}]")
    elif isinstance(a, str) and where.endswith(".embedding"):  # base64 float32
        same(list(np.frombuffer(base64.b64decode(a), "<f4").tolist()),
             list(np.frombuffer(base64.b64decode(b), "<f4").tolist()), where)  # fmt: skip
    elif isinstance(a, float) or isinstance(b, float):
        assert math.isclose(a, b, rel_tol=1e-4, abs_tol=1e-5), (where, a, b)
    else:
        assert a == b, (where, a, b)


def assert_error_line(out: dict[str, Any], status: int, custom_id: str | None, text: str) -> None:
    """A failed line: the status, a null body and the error answer (server shape) in
    ``error``, as vLLM writes it."""
    assert out["custom_id"] == custom_id
    response = out["response"]
    assert response["status_code"] == status
    assert response["request_id"]
    assert response["body"] is None
    error = out["error"]["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["code"] == status and text in error["message"], error


def check_against_server(url: str, lines: list[str], outs: list[dict[str, Any]]) -> None:
    """Each output line is what the live server at ``url`` answers that line's POST
    (the body sent as the exact text it has in the line)."""
    assert len(outs) == len(lines)
    for raw, out in zip(lines, outs, strict=True):
        req = json.loads(raw)
        assert set(out) == {"id", "custom_id", "response", "error"}
        assert out["id"].startswith("batch_req_")
        assert out["custom_id"] == req["custom_id"]
        body_text = raw[raw.index('"body": ') + len('"body": ') : -1]
        answer = requests.post(
            url + req["url"],
            data=body_text.encode(),
            headers={"Content-Type": "application/json"},
            timeout=30,
        )
        response = out["response"]
        assert set(response) == {"status_code", "request_id", "body"}
        assert response["status_code"] == answer.status_code, (req, response)
        if answer.status_code < 400:
            same(response["body"], answer.json())
            assert out["error"] is None
        else:  # vLLM's shape: no body, the error answer in `error`
            assert response["body"] is None
            same(out["error"], answer.json())
            continue
        if "id" in response["body"]:  # the body's id names the request, as the server's
            assert response["request_id"] in response["body"]["id"]


@pytest.fixture(scope="module")
def st_url(st_model: Path) -> Iterator[str]:
    with serve_in_thread(make_context(st_model)) as url:
        yield url


@pytest.fixture(scope="module")
def cross_url(cross_model: Path) -> Iterator[str]:
    with serve_in_thread(make_context(cross_model)) as url:
        yield url


def test_embedding_model_answers_as_the_server(st_model: Path, st_url: str, tmp_path: Path) -> None:
    served = [
        line("emb-1", "/v1/embeddings", {"input": "hello world"}),
        line("emb-2", "/v1/embeddings", {"input": ["a b c", "d"], "encoding_format": "base64"}),
        line("emb-bad", "/v1/embeddings", {"input": 5}),  # the server's 400
        line("emb-model", "/v1/embeddings", {"input": "x", "model": "no-such-model"}),
        line("score-1", "/score", {"queries": QUERY, "documents": DOCS}),
        line("score-2", "/v1/score", {"text_1": "a", "text_2": ["b", "c"]}),
        line("pool-1", "/pooling", {"input": "pooled"}),
        line("nowhere", "/v1/nowhere", {"input": "x"}),  # the server's 404
        line("dup", "/v1/embeddings", {"input": "x"}).replace('"input"', '"input": "y", "input"'),
    ]
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    malformed = '{"custom_id": "broken", "method": "POST", "url": "/v1/embeddings", "body": {'
    inp.write_text("\n".join([*served[:4], malformed, *served[4:]]) + "\n", encoding="utf-8")
    assert run_batch(st_model, inp, out) == 0
    outs = read_out(out)
    assert_error_line(outs.pop(4), 400, "broken", "line 5: the line is not valid JSON")
    check_against_server(st_url, served, outs)


def test_cross_encoder_answers_as_the_server(
    cross_model: Path, cross_url: str, tmp_path: Path
) -> None:
    served = [
        line("score", "/score", {"queries": QUERY, "documents": DOCS}),
        line("rerank", "/rerank", {"query": QUERY, "documents": DOCS, "top_n": 2}),
        line("rerank-v1", "/v1/rerank", {"query": QUERY, "documents": DOCS}),
        line("rerank-v2", "/v2/rerank", {"query": QUERY, "documents": DOCS}),
        line("rerank-bad", "/rerank", {"documents": DOCS}),  # no query: the server's 400
        line("unknown", "/v1/embeddingz", {"input": "x"}),
    ]
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    inp.write_text("\n".join(served), encoding="utf-8")  # no final newline
    assert run_batch(cross_model, inp, out, "--max-inflight", "2") == 0
    check_against_server(cross_url, served, read_out(out))


def test_bad_lines_become_error_lines(st_model: Path, tmp_path: Path) -> None:
    ok = line("ok", "/v1/embeddings", {"input": "fine"})
    lines = [
        "",
        ok,
        "   \t",
        "not json at all",
        json.dumps({"custom_id": "no-body", "method": "POST", "url": "/v1/embeddings"}),
        line("get", "/v1/embeddings", {"input": "x"}, method="GET"),
        json.dumps({"method": "POST", "url": "/v1/embeddings", "body": {"input": "x"}}),
        json.dumps({"custom_id": "no-url", "method": "POST", "body": {"input": "x"}}),
        json.dumps({"custom_id": 7, "method": "POST", "url": "/score", "body": {}}),
        "[1, 2]",
        line("bytes", "/v1/embeddings", {"input": "x", "encoding_format": "bytes"}),
        "\r",
        ok.replace('"ok"', '"ok-crlf"') + "\r",
    ]
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    inp.write_bytes(b"\xef\xbb\xbf" + "\n".join(lines).encode() + b"\n\n")
    assert run_batch(st_model, inp, out) == 0
    outs = read_out(out)
    assert len(outs) == 10  # the blank lines have none
    assert outs[0]["custom_id"] == "ok" and outs[0]["error"] is None
    assert outs[0]["response"]["status_code"] == 200
    assert_error_line(outs[1], 400, None, "line 4: the line is not valid JSON")
    assert_error_line(outs[2], 400, "no-body", "line 5: the line has no `body`")
    assert_error_line(outs[3], 405, "get", "method GET is not allowed")
    assert_error_line(outs[4], 400, None, "no `custom_id`")
    assert_error_line(outs[5], 400, "no-url", "no `url`")
    assert_error_line(outs[6], 400, None, "non-string `custom_id`")
    assert_error_line(outs[7], 400, None, "not a JSON object")
    assert_error_line(outs[8], 400, "bytes", "a batch file holds JSON answers only")
    assert outs[9]["custom_id"] == "ok-crlf" and outs[9]["response"]["status_code"] == 200


def test_order_kept_under_concurrency(
    st_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: Any
) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(st_model)
    texts = [" ".join(["word"] * (1 + (i * 7) % 10)) + f" {i}" for i in range(300)]
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    inp.write_text("".join(line(f"r{i}", "/v1/embeddings", {"input": t}) + "\n"
                           for i, t in enumerate(texts)))  # fmt: skip
    monkeypatch.setattr(run_batch_cli, "LOG_EVERY", 0.0)
    with caplog.at_level(logging.INFO, logger="poolserve.batch"):
        assert run_batch(st_model, inp, out, "--max-inflight", "64") == 0
    outs = read_out(out)
    assert [o["custom_id"] for o in outs] == [f"r{i}" for i in range(300)]
    for text, o in zip(texts, outs, strict=True):
        tokens = len(tokenizer(text)["input_ids"])  # the answer is this line's
        assert o["response"]["status_code"] == 200, o
        assert o["response"]["body"]["usage"]["prompt_tokens"] == tokens
    assert "lines done" in caplog.text  # the progress log line off a terminal


def test_stdin_to_stdout(
    st_model: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    data = "\n".join(line(f"s{i}", "/v1/embeddings", {"input": f"t {i}"}) for i in range(5))
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data.encode())))
    assert run_batch(st_model, "-", "-") == 0
    captured = capsys.readouterr()
    outs = [json.loads(x) for x in captured.out.splitlines()]
    assert [o["custom_id"] for o in outs] == [f"s{i}" for i in range(5)]
    assert all(o["response"]["status_code"] == 200 for o in outs)
    assert "poolserve run-batch: 5 lines, 5 ok, 0 failed" in captured.err


def test_output_appears_only_complete(
    st_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    inp.write_text("\n".join(line(f"c{i}", "/v1/embeddings", {"input": "x"}) for i in range(20)))
    out.write_text("old\n")
    seen: list[str] = []
    real_write = run_batch_cli.Output.write

    def spying_write(self: run_batch_cli.Output, data: bytes) -> None:
        seen.append(out.read_text())  # what a reader of OUT sees mid-run
        real_write(self, data)

    monkeypatch.setattr(run_batch_cli.Output, "write", spying_write)
    assert run_batch(st_model, inp, out) == 0
    assert set(seen) == {"old\n"}
    assert len(read_out(out)) == 20
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl", "out.jsonl"]


class _FailingInput(io.RawIOBase):
    """A stream that gives one line, then fails as a broken disk would."""

    def __init__(self, first: bytes) -> None:
        self.first: bytes | None = first

    def readable(self) -> bool:
        return True

    def read1(self, size: int = -1) -> bytes:
        if self.first is None:
            raise OSError("Input/output error")
        data, self.first = self.first, None
        return data


def test_exit_codes_and_no_partial_output(
    st_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    inp.write_text(line("a", "/v1/embeddings", {"input": "x"}) + "\n")
    assert run_batch(st_model, tmp_path / "missing.jsonl", out) == 1
    assert run_batch(st_model, inp, tmp_path / "no-dir" / "out.jsonl") == 1
    assert run_batch(st_model, inp, tmp_path) == 1  # a directory
    empty = tmp_path / "not-a-model"
    empty.mkdir()
    assert run_batch(empty, inp, out) == 1  # the model cannot load
    assert not out.exists()
    # The input breaks mid-run: exit 1, and OUT is left as it was.
    out.write_text("old\n")
    stream = _FailingInput((line("a", "/v1/embeddings", {"input": "x"}) + "\n").encode())
    monkeypatch.setattr(run_batch_cli, "open_input", lambda name: stream)
    assert run_batch(st_model, inp, out) == 1
    assert out.read_text() == "old\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl", "not-a-model", "out.jsonl"]


def test_http_input_and_output(st_model: Path, tmp_path: Path) -> None:
    data = "\n".join(line(f"u{i}", "/v1/embeddings", {"input": f"t {i}"}) for i in range(3))
    uploaded: dict[str, bytes] = {}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data.encode())

        def do_PUT(self) -> None:
            uploaded[self.path] = self.rfile.read(int(self.headers["Content-Length"]))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        base = f"http://127.0.0.1:{server.server_address[1]}"
        assert run_batch(st_model, f"{base}/in.jsonl", f"{base}/out.jsonl",
                         "--output-tmp-dir", str(tmp_path)) == 0  # fmt: skip
    finally:
        server.shutdown()
    outs = [json.loads(x) for x in uploaded["/out.jsonl"].decode().splitlines()]
    assert [o["custom_id"] for o in outs] == ["u0", "u1", "u2"]
    assert list(tmp_path.iterdir()) == []  # the staged output is gone


def test_vllm_model_flag_and_query_string(st_model: Path, tmp_path: Path) -> None:
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    inp.write_text(line("q", "/v1/embeddings?x=1", {"input": "x"}) + "\n")
    argv = ["run-batch", "-i", str(inp), "-o", str(out), "--model", str(st_model)]
    assert main([*argv, "--dtype", "float32", "--backend", TEST_BACKEND]) == 0
    assert read_out(out)[0]["response"]["status_code"] == 200


def test_line_format_units() -> None:
    raw = b'{"custom_id": "x", "method": "post", "url": "/score", "body" : {"a": 1.50, "a": 2} }'
    req = parse_line(raw)
    assert (req.custom_id, req.path, req.body) == ("x", "/score", b'{"a": 1.50, "a": 2}')
    formatted = json.loads(format_line("x", 200, "rid", b'{"k":[1,2]}', failed=False))
    assert formatted["response"] == {"status_code": 200, "request_id": "rid", "body": {"k": [1, 2]}}
    assert formatted["error"] is None
    with pytest.raises(LineError, match="repeats the key 'url'"):
        parse_line(b'{"custom_id": "x", "url": "/a", "url": "/b", "method": "POST", "body": {}}')


def test_read_lines_across_chunks() -> None:
    data = b"\xef\xbb\xbf" + b'{"a": 1}\n\n  \n' + b"x" * 50 + b'\n{"b": 2}\r\n{"c": 3}'
    got = asyncio.run(_collect(run_batch_cli.read_lines(io.BytesIO(data), 20, chunk_size=3)))
    assert got == [(1, b'{"a": 1}'), (4, None), (5, b'{"b": 2}\r'), (6, b'{"c": 3}')]
    assert asyncio.run(_collect(run_batch_cli.read_lines(io.BytesIO(b"\xef\xbb\xbf"), 9))) == []


async def _collect(lines: Any) -> list[Any]:
    return [x async for x in lines]


def test_run_ordered_stops_at_the_first_failure() -> None:
    written: list[bytes] = []

    async def lines() -> Any:
        for i in range(50):
            yield i, b"%d" % i

    async def answer(line_no: int, raw: bytes | None) -> tuple[bytes, bool]:
        await asyncio.sleep(0.001 * ((line_no * 7) % 5))  # finish out of order
        if line_no == 20:
            raise EngineDied("gone")
        return b"%d\n" % line_no, True

    with pytest.raises(EngineDied):
        asyncio.run(
            run_ordered(lines(), answer, lambda x, ok: written.append(x), max_inflight=4, window=8)
        )
    assert written == [b"%d\n" % i for i in range(len(written))]  # an in-order prefix
    assert len(written) <= 20
