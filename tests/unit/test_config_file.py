"""``serve --config FILE.yaml`` (config_file.py): vLLM's flat form and a models list."""

from __future__ import annotations

from pathlib import Path

import pytest

from poolserve.cli import parse_args
from poolserve.flags import config_from


def _write(tmp_path: Path, text: str, name: str = "models.yaml") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_models_list_gives_one_config_per_model(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        """
max_num_seqs: 16
models:
  - model: /m/embed
    served_model_name: [e5, embedder]
    dtype: half
    pooler_config: {normalize: false}
  - model: /m/rerank
    task: score
    served-model-name: reranker
    max_queued_requests: 3
    trust_remote_code: true
""",
    )
    args = parse_args(["serve", "--config", path, "--port", "9001"])
    assert args.models_args is not None and len(args.models_args) == 2
    first, second = (config_from(a) for a in args.models_args)
    assert first.model.model == "/m/embed"
    assert first.model.served_model_name == ("e5", "embedder")
    assert first.model.dtype == "float16"  # vLLM's name, as on the command line
    assert first.model.override_pooler_config == {"normalize": False}
    assert second.model.task == "score" and second.model.trust_remote_code
    assert second.model.served_model_name == ("reranker",)
    assert second.engine.max_queued_requests == 3
    for config in (first, second):
        assert config.engine.max_num_seqs == 16  # the file's top level: every model
        assert config.server.port == 9001  # the command line: the server


def test_command_line_wins_over_file_and_entry_over_top(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        "max_num_seqs: 16\nmodels:\n  - model: a\n    max_num_seqs: 4\n  - model: b\n",
    )
    args = parse_args(["serve", "--config", path])
    assert [config_from(a).engine.max_num_seqs for a in args.models_args] == [4, 16]
    args = parse_args(["serve", f"--config={path}", "--max-num-seqs", "2"])
    assert [config_from(a).engine.max_num_seqs for a in args.models_args] == [2, 2]


def test_vllm_flat_form_is_one_model(tmp_path: Path) -> None:
    path = _write(tmp_path, "model: /m/x\nport: 8123\nmax-num-seqs: 5\nenforce-eager: true\n")
    args = parse_args(["serve", "--config", path])
    assert args.models_args is None
    config = config_from(args)
    assert (config.model.model, config.server.port, config.engine.max_num_seqs) == (
        "/m/x",
        8123,
        5,
    )
    # vLLM: the MODEL argument beats the file's `model`.
    assert config_from(parse_args(["serve", "/m/y", "--config", path])).model.model == "/m/y"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("models:\n  - model: a\n    port: 1\n", "`port` is server-wide"),
        ("models:\n  - model: a\n    api_key: k\n", "`api_key` is server-wide"),
        ("models:\n  - model: a\n    nonsense: 1\n", "`nonsense` is not a serve flag"),
        ("models:\n  - dtype: float32\n", "`model` (a path"),
        ("models: []\n", "must be a non-empty list"),
        ("models:\n  - just-a-string\n", "must be a mapping"),
        ("- a\n- b\n", "must be a mapping of flags"),
        ("models: [\n", "not YAML"),
    ],
)
def test_bad_files_are_refused_by_name(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, message: str
) -> None:
    path = _write(tmp_path, text)
    with pytest.raises(SystemExit) as exc:
        parse_args(["serve", "--config", path])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert message in err and path in err


def test_model_argument_with_models_list_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _write(tmp_path, "models:\n  - model: a\n")
    with pytest.raises(SystemExit):
        parse_args(["serve", "other", "--config", path])
    assert "give each model in its entry" in capsys.readouterr().err


def test_missing_file_and_wrong_suffix(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        parse_args(["serve", "--config", str(tmp_path / "none.yaml")])
    assert "none.yaml" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parse_args(["serve", "--config", _write(tmp_path, "port: 1\n", "x.json")])
    assert "must be a .yaml or .yml file" in capsys.readouterr().err


def test_several_models_refuse_ray_serve_and_uneven_engines(tmp_path: Path) -> None:
    from poolserve.cli import main

    path = _write(tmp_path, "models:\n  - model: a\n    data_parallel_size: 2\n  - model: b\n")
    assert main(["serve", "--config", path, "--ray-serve"]) == 1
    assert main(["serve", "--config", path, "--port", "0"]) == 1  # 2 engines vs 1


def test_a_name_given_to_two_models_is_refused_at_start(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from poolserve.cli import main

    path = _write(tmp_path, "models:\n  - model: a\n  - model: b\n")
    assert main(["serve", "--config", path, "--served-model-name", "x"]) == 1
    assert "`x` is given to two models" in capsys.readouterr().err
