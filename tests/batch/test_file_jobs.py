"""File jobs (``poolserve embed|classify|score`` over files): formats, order, resumability.

Most tests run the job in-process on one shared tiny model (run_job with a compute on
it); the SIGKILL test runs the real command in a subprocess.
"""

from __future__ import annotations

import csv
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from poolserve.batch import job as job_module
from poolserve.batch.files import WindowReader
from poolserve.batch.job import JobError, JobSpec, run_job
from poolserve.batch.window import TaskOptions, Window, WindowWorker
from poolserve.cli import main
from poolserve.offline import PoolingModel

ROOT = Path(__file__).resolve().parents[2]
ATOL = 1e-5  # engine batches differ between runs (padding), float noise only


def _texts(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    words = ["alpha", "beta", "gamma", "delta", "omega", "kappa", "zeta"]
    return [" ".join(rng.choices(words, k=rng.randint(1, 8))) + f" {i}" for i in range(n)]


def _write_input(path: Path, rows: list[dict[str, Any]]) -> None:
    """``rows`` as .txt (the text only), .jsonl, .csv or .parquet (small row groups)."""
    if path.suffix == ".txt":
        path.write_text("".join(r["text"] + "\n" for r in rows), encoding="utf-8")
    elif path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    elif path.suffix == ".csv":
        with open(path, "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    else:
        pq.write_table(pa.Table.from_pylist(rows), path, row_group_size=7)


def _read_output(path: Path, key: str) -> tuple[np.ndarray, list[Any] | None, list[Any]]:
    """(values, ids or None, errors) of an output file; null values as NaN."""
    if path.suffix == ".npy":
        return np.load(path), None, []
    if path.suffix == ".parquet":
        objs = pq.read_table(path).to_pylist()
    else:
        objs = [json.loads(line) for line in path.read_text().splitlines()]
        assert [o["index"] for o in objs] == list(range(len(objs)))
    values = [o[key] for o in objs]
    width = next((len(v) for v in values if isinstance(v, list)), 0)
    nan: Any = [np.nan] * width if width else np.nan
    array = np.array([nan if v is None else v for v in values], dtype=np.float32)
    ids = [o["id"] for o in objs] if objs and "id" in objs[0] else None
    return array, ids, [o["error"] for o in objs]


@pytest.fixture(scope="module")
def st(tiny: Callable[..., Path]) -> Iterator[tuple[Path, PoolingModel]]:
    path = tiny("st")
    with PoolingModel(str(path), dtype="float32") as model:
        yield path, model


def _compute(model: PoolingModel, options: TaskOptions) -> Any:
    worker = WindowWorker(model, options)
    return lambda windows: (worker.run(w) for w in windows)


def _spec(model_path: Path, inp: Path, out: Path, task: str = "embed", **kw: Any) -> JobSpec:
    options = kw.pop("options", TaskOptions(task, chunk=5))
    kw.setdefault("fields", {"text": "text", "id": "id"})
    kw.setdefault("window", 16)
    model_options = {"model": str(model_path), "dtype": "float32"}
    return JobSpec(str(inp), str(out), options, model_options, progress=False, **kw)


@pytest.mark.parametrize("fin", ["txt", "jsonl", "csv", "parquet"])
@pytest.mark.parametrize("fout", ["parquet", "jsonl", "npy"])
def test_formats_give_the_same_vectors_as_embed(
    st: tuple[Path, PoolingModel], tmp_path: Path, fin: str, fout: str
) -> None:
    path, model = st
    texts = _texts(53)
    rows = [{"id": f"doc-{i}", "text": t} for i, t in enumerate(texts)]
    _write_input(inp := tmp_path / f"in.{fin}", rows)
    fields = {"text": "text"} if fin == "txt" else {"text": "text", "id": "id"}
    spec = _spec(path, inp, out := tmp_path / f"out.{fout}", fields=fields)
    summary = run_job(spec, _compute(model, spec.options))
    assert (summary.rows, summary.computed, summary.failed) == (53, 53, 0)
    values, ids, _ = _read_output(out, "embedding")
    np.testing.assert_allclose(values, model.embed(texts), atol=ATOL)
    if fin != "txt" and fout != "npy":
        assert ids == [r["id"] for r in rows]
    assert not Path(str(out) + ".parts").exists()


def test_classify_and_score(tiny: Callable[..., Path], tmp_path: Path) -> None:
    texts = _texts(40, seed=1)
    path = tiny("cross", "bert", num_labels=2)
    rows = [{"id": i, "text": t} for i, t in enumerate(texts)]
    _write_input(inp := tmp_path / "in.jsonl", rows)
    with PoolingModel(str(path), dtype="float32") as model:
        spec = _spec(path, inp, out := tmp_path / "c.parquet", "classify")
        run_job(spec, _compute(model, spec.options))
        table = pq.read_table(out).to_pylist()
        probs = model.classify(texts)
        got = np.array([r["probs"] for r in table], dtype=np.float32)
        np.testing.assert_allclose(got, probs, atol=ATOL)
        assert model.labels is not None
        assert [r["label"] for r in table] == [model.labels[k] for k in probs.argmax(1)]
        assert [r["id"] for r in table] == list(range(40))

    path = tiny("cross", "bert")
    pairs = [{"q": f"query {i % 3}", "d": t} for i, t in enumerate(texts)]
    _write_input(inp := tmp_path / "pairs.csv", pairs)
    with PoolingModel(str(path), dtype="float32") as model:
        expected = model.score([p["q"] for p in pairs], [p["d"] for p in pairs])
        for fout in ("npy", "jsonl"):
            spec = _spec(
                path,
                inp,
                out := tmp_path / f"s.{fout}",
                "score",
                fields={"text_1": "q", "text_2": "d"},
            )
            run_job(spec, _compute(model, spec.options))
            np.testing.assert_allclose(_read_output(out, "score")[0], expected, atol=ATOL)


def test_reader_skips_done_windows(tmp_path: Path) -> None:
    rows = [{"id": i, "text": f"t{i}"} for i in range(50)]
    for fmt in ("txt", "jsonl", "csv", "parquet"):
        _write_input(inp := tmp_path / f"in.{fmt}", rows)
        fields = {"text": "text"} if fmt == "txt" else {"text": "text", "id": "id"}
        reader = WindowReader(str(inp), fmt, fields, 8)
        every = {w.index: w for w in reader.windows()}
        assert (reader.rows, reader.count) == (50, 7)
        rest = list(reader.windows(done={0, 1, 2, 4}))
        assert [w.index for w in rest] == [3, 5, 6]
        assert all(w.columns == every[w.index].columns for w in rest), fmt
        assert [w.start for w in rest] == [24, 40, 48]
        assert (reader.rows, reader.count) == (50, 7)


def test_sigkill_at_random_points_then_resume(
    st: tuple[Path, PoolingModel], tmp_path: Path
) -> None:
    """The issue's test: killed with SIGKILL at random points (3 times), the job ends
    with exactly the full output, every row once, the values of a clean run."""
    path, model = st
    n, window = 12000, 100
    texts = _texts(n, seed=2)
    _write_input(
        inp := tmp_path / "in.parquet", [{"id": i, "text": t} for i, t in enumerate(texts)]
    )
    out = tmp_path / "out.parquet"
    parts = Path(str(out) + ".parts")
    args = [sys.executable, "-m", "poolserve", "embed", str(path), "--dtype", "float32"]
    args += ["-i", str(inp), "-o", str(out), "--id-field", "id", "--window", str(window)]
    rng = random.Random(1234)

    def shards() -> int:
        return len(list(parts.glob("*.parquet"))) if parts.exists() else 0

    def kill_when(cond: Callable[[], bool]) -> None:
        proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while proc.poll() is None and not cond() and time.monotonic() < deadline:
            time.sleep(0.005)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)

    seen: list[int] = []
    for attempt in range(3):
        if attempt == 1:  # anywhere: start-up, model load or computing
            at = time.monotonic() + rng.uniform(0.5, 6.0)
            kill_when(lambda at=at: time.monotonic() >= at)
        else:  # surely mid-job: after this run wrote a random number of windows
            target = shards() + rng.randint(1, 25)
            kill_when(lambda target=target: shards() >= target)
        seen.append(shards())
        assert not out.exists(), "a killed run must not have finished"
    assert max(seen) > 0 and seen[-1] < n // window, seen
    done = subprocess.run(args, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "resumed" in done.stderr
    table = pq.read_table(out)
    assert table["id"].to_pylist() == list(range(n))
    assert table["error"].null_count == n
    got = np.array(table["embedding"].to_pylist(), dtype=np.float32)
    np.testing.assert_allclose(got, model.embed(texts), atol=ATOL)
    assert not parts.exists()
    assert not [p for p in tmp_path.iterdir() if p.name not in ("in.parquet", "out.parquet")]


class _Crash(Exception):
    pass


def test_a_crash_at_any_step_then_resume(
    st: tuple[Path, PoolingModel], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Crash at each rename / removal of a job in turn (shards, sidecar, checkpoint,
    errors report, output, cleanup); the rerun always ends with the exact output."""
    path, model = st
    texts = _texts(45, seed=3)
    rows = [{"id": i, "text": t if i != 17 else None} for i, t in enumerate(texts)]
    _write_input(inp := tmp_path / "in.jsonl", rows)
    out = tmp_path / "out.jsonl"
    spec = _spec(path, inp, out, on_error="skip")
    calls, crash_at = [0], [0]

    def counted(real: Callable[..., Any]) -> Callable[..., Any]:
        def step(*args: Any, **kwargs: Any) -> Any:
            calls[0] += 1
            if calls[0] == crash_at[0]:
                raise _Crash
            return real(*args, **kwargs)

        return step

    monkeypatch.setattr(job_module.os, "replace", counted(os.replace))
    monkeypatch.setattr(job_module.shutil, "rmtree", counted(job_module.shutil.rmtree))
    run_job(spec, _compute(model, spec.options))
    steps = calls[0]
    assert steps >= 9  # checkpoint x2, shards x3, sidecar, report, output, cleanup x2
    for k in range(1, steps + 1):
        for p in tmp_path.glob("out.*"):
            (job_module.shutil.rmtree if p.is_dir() else os.remove)(p)
        calls[0], crash_at[0] = 0, k
        with pytest.raises(_Crash):
            run_job(spec, _compute(model, spec.options))
        crash_at[0] = 0
        summary = run_job(spec, _compute(model, spec.options))
        assert (summary.rows, summary.failed) == (45, 1), k
        values, ids, errors = _read_output(out, "embedding")
        assert ids == list(range(45)), k
        assert [i for i, e in enumerate(errors) if e] == [17]
        good = [i for i in range(45) if i != 17]
        np.testing.assert_allclose(values[good], model.embed([texts[i] for i in good]), atol=ATOL)
        assert np.isnan(values[17]).all()
        report = Path(str(out) + ".errors.jsonl").read_text().splitlines()
        assert [json.loads(x) for x in report] == [{"row": 17, "id": 17, "error": "text is null"}]
        assert sorted(p.name for p in tmp_path.glob("out.*")) == [
            "out.jsonl",
            "out.jsonl.errors.jsonl",
        ]


def test_changed_arguments_are_refused(st: tuple[Path, PoolingModel], tmp_path: Path) -> None:
    path, model = st
    _write_input(
        inp := tmp_path / "in.jsonl", [{"id": i, "text": t} for i, t in enumerate(_texts(40))]
    )
    out = tmp_path / "out.npy"
    spec = _spec(path, inp, out)
    compute = _compute(model, spec.options)

    def two_windows(windows: Iterator[Window]) -> Iterator[Any]:
        for k, result in enumerate(compute(windows)):
            if k == 2:
                raise _Crash
            yield result

    with pytest.raises(_Crash):
        run_job(spec, two_windows)
    with pytest.raises(JobError, match=r"window: 16 -> 8.*--restart"):
        run_job(_spec(path, inp, out, window=8), compute)
    normalize = TaskOptions("embed", normalize=False, chunk=5)
    with pytest.raises(JobError, match="normalize"):
        run_job(_spec(path, inp, out, options=normalize), compute)
    summary = run_job(_spec(path, inp, out, window=8, restart=True), compute)
    assert summary.computed == 40
    # Same arguments but a different chunk size resumes (chunking is not part of it).
    with pytest.raises(_Crash):
        run_job(spec, two_windows)
    summary = run_job(_spec(path, inp, out, options=TaskOptions("embed", chunk=3)), compute)
    assert (summary.rows, summary.computed) == (40, 40 - 32)


def test_bad_rows_fail_then_skip(
    st: tuple[Path, PoolingModel], tmp_path: Path, capsys: Any
) -> None:
    path, _ = st
    lines = [json.dumps({"id": i, "text": f"row {i}"}) for i in range(30)]
    lines[3] = json.dumps({"id": 3})  # no text
    lines[11] = "{not json"
    lines[20] = json.dumps({"id": 20, "text": "word " * 200})  # past the max length
    lines[25] = json.dumps({"id": 25, "text": 7})
    (inp := tmp_path / "in.jsonl").write_text("\n".join(lines) + "\n")
    out = tmp_path / "out.parquet"
    base = ["embed", str(path), "--dtype", "float32", "-i", str(inp), "-o", str(out)]
    base += ["--id-field", "id", "--window", "10", "--no-progress"]
    assert main(base) == 1
    err = capsys.readouterr().err
    assert "row 3 (id 3): missing field 'text'" in err and "stopped" in err
    assert not out.exists() and Path(str(out) + ".parts").exists()

    assert main([*base, "--on-error", "skip"]) == 0  # resumes the fail run's checkpoint
    err = capsys.readouterr().err
    for row in (11, 20, 25):
        assert f"row {row}" in err
    assert "4 failed" in err
    table = pq.read_table(out).to_pylist()
    bad = {r["id"]: r["error"] for r in table if r["error"] and r["id"] is not None}
    assert sorted(bad) == [3, 20, 25] and table[11]["error"].startswith("row is not valid JSON")
    assert "maximum context length" in bad[20] and "not a string" in bad[25]
    assert all(r["embedding"] is None for r in table if r["error"])
    report = [json.loads(x) for x in Path(str(out) + ".errors.jsonl").read_text().splitlines()]
    assert [r["row"] for r in report] == [3, 11, 20, 25]
    # An option the model refuses fails the job once, not every row.
    assert main([*base, "-o", str(tmp_path / "d.npy"), "--dimensions", "4096"]) == 1
    err = capsys.readouterr().err
    assert "dimensions" in err and "row 0" not in err


def test_old_embed_command_still_works(
    st: tuple[Path, PoolingModel], tmp_path: Path, capfd: Any
) -> None:
    path, model = st
    texts = _texts(9)
    (inp := tmp_path / "texts.txt").write_text(
        "\n".join(texts[:4]) + "\n\n" + "\n".join(texts[4:]) + "\n"
    )
    assert (
        main(
            [
                "embed",
                str(path),
                "--dtype",
                "float32",
                "-i",
                str(inp),
                "-o",
                str(tmp_path / "v.npy"),
            ]
        )
        == 0
    )
    np.testing.assert_allclose(np.load(tmp_path / "v.npy"), model.embed(texts), atol=ATOL)
    capfd.readouterr()
    assert main(["embed", str(path), "--dtype", "float32", "-i", str(inp), "--no-progress"]) == 0
    objs = [json.loads(x) for x in capfd.readouterr().out.splitlines()]
    assert [o["index"] for o in objs] == list(range(9))
    np.testing.assert_allclose(
        np.array([o["embedding"] for o in objs]), model.embed(texts), atol=ATOL
    )
