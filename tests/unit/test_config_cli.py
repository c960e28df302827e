"""poolserve.config.parse_size and the CLI parser -> Config mapping."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from poolserve.cli import _config_from, build_parser, parse_args
from poolserve.config import Config, EngineConfig, ModelConfig, ServerConfig, parse_size


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("512", 512),
        ("0", 0),
        ("1k", 1_000),
        ("25.6k", 25_600),
        ("32k", 32_000),
        ("1.5k", 1_500),
        ("1.001k", 1_001),  # exact: no float rounding
        ("0.1k", 100),
        ("2m", 2_000_000),
        ("2g", 2_000_000_000),
        # As vLLM's human_readable_int: upper-case units are binary.
        ("1K", 1_024),
        ("64M", 64 * 2**20),
        ("1G", 2**30),
        (" 8k ", 8_000),
        ("10kb", 10_000),
        ("10KiB", 10 * 1_024),
        ("3.0", 3),
    ],
)
def test_parse_size(text: str, value: int) -> None:
    assert parse_size(text) == value


def test_parse_size_every_three_decimal_k_is_exact() -> None:
    assert [parse_size(f"1.{i:03d}k") for i in range(1000)] == list(range(1000, 2000))


@pytest.mark.parametrize(
    "text",
    ["", "k", "abc", "-1", "1.2.3", "1e3", "12x", "1.5", "1.0005k", "1 k k", "1,000", "1t", "nan"],
)
def test_parse_size_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        parse_size(text)


def parse(*argv: str):
    return build_parser().parse_args(["serve", *argv])


def test_full_command_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("POOLSERVE_API_KEY", raising=False)
    args = parse(
        "my/model",
        "--task", "embed",
        "--served-model-name", "a", "b",
        "--max-model-len", "1k",
        "--override-pooler-config", '{"pooling_type":"CLS"}',
        "--api-key", "k1", "k2",
    )  # fmt: skip
    assert args.command == "serve"
    config = _config_from(args)
    assert isinstance(config, Config)
    assert config.model == ModelConfig(
        model="my/model",
        task="embed",
        served_model_name=("a", "b"),
        max_model_len=1000,
        override_pooler_config={"pooling_type": "CLS"},
    )
    assert config.server.api_key == ("k1", "k2")
    assert config.engine == EngineConfig()
    assert dataclasses.replace(config.server, api_key=()) == ServerConfig()


def test_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("POOLSERVE_API_KEY", raising=False)
    config = _config_from(parse())
    assert config == Config()
    assert config.model.model is None
    assert config.server.port == 8000


def test_other_flags(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("POOLSERVE_API_KEY", raising=False)
    config = _config_from(
        parse(
            "m",
            "--dtype", "bfloat16",
            "--max-num-batched-tokens", "4096",
            "--max-num-seqs", "16",
            "--max-request-bytes", "1m",
            "--port", "9001",
            "--host", "127.0.0.1",
            "--trust-remote-code",
            "--auto-truncate",
            "--hf-overrides", '{"is_matryoshka": true}',
            "--allowed-origins", "http://a", "http://b",
            "--root-path", "/api",
            "--disable-log-requests",
        )
    )  # fmt: skip
    assert config.model.dtype == "bfloat16"
    assert config.model.trust_remote_code is True and config.model.auto_truncate is True
    assert config.model.hf_overrides == {"is_matryoshka": True}
    assert (config.engine.max_num_batched_tokens, config.engine.max_num_seqs) == (4096, 16)
    assert config.server.max_request_bytes == 1_000_000
    assert (config.server.host, config.server.port) == ("127.0.0.1", 9001)
    assert config.server.allowed_origins == ("http://a", "http://b")
    assert config.server.root_path == "/api"


@pytest.mark.parametrize(
    ("argv", "origins"),
    [
        ([], ("*",)),  # vLLM's default
        (["--allowed-origins", '["http://a", "http://b"]'], ("http://a", "http://b")),
        (["--allowed-origins", "[]"], ()),
        (["--allowed-origins", "http://a", '["http://b"]'], ("http://a", "http://b")),
    ],
)
def test_cors_lists_take_vllm_json_form(argv: list[str], origins: tuple[str, ...]) -> None:
    config = _config_from(build_parser().parse_args(["serve", "m", *argv]))
    assert config.server.allowed_origins == origins
    assert config.server.allowed_methods == ("*",)


@pytest.mark.parametrize("bad", ["[1]", '["a", 2]', "[not json"])
def test_cors_list_errors(bad: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve", "m", "--allowed-origins", bad])
    assert "--allowed-origins" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv",
    [
        ["--task", "generate"],
        ["--dtype", "float8"],
        ["--max-model-len", "lots"],
        ["--override-pooler-config", "{not json"],
        ["--override-pooler-config", "[1, 2]"],
        ["--port", "eighty"],
        ["--served-model-name"],
    ],
)
def test_bad_flags_exit_with_usage_error(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as info:
        parse("m", *argv)
    assert info.value.code == 2
    assert "error" in capsys.readouterr().err


def test_api_key_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POOLSERVE_API_KEY", "secret")
    assert _config_from(parse("m")).server.api_key == ("secret",)
    monkeypatch.setenv("POOLSERVE_API_KEY", "k1,k2,")
    assert _config_from(parse("m")).server.api_key == ("k1", "k2")


def test_api_key_flag_beats_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POOLSERVE_API_KEY", "from-env")
    assert _config_from(parse("m", "--api-key", "from-flag")).server.api_key == ("from-flag",)


def test_empty_api_key_environment_is_no_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POOLSERVE_API_KEY", "")
    assert _config_from(parse("m")).server.api_key == ()


def test_every_config_field_has_help() -> None:
    for cls in (ModelConfig, EngineConfig, ServerConfig):
        for f in dataclasses.fields(cls):
            assert f.metadata.get("help"), f"{cls.__name__}.{f.name} has no help text"


def test_configs_are_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        Config().model.task = "embed"  # type: ignore[misc]


def test_version_flag(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        build_parser().parse_args(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out.startswith("poolserve ")


# --- newest vLLM's --pooler-config: JSON and dotted forms (issue 13) --------------------


def _pooler(*argv: str) -> Any:
    return _config_from(parse_args(["serve", "m", *argv])).model.override_pooler_config


def test_pooler_config_json_and_alias() -> None:
    body = '{"pooling_type": "MEAN", "normalize": true}'
    want = {"pooling_type": "MEAN", "normalize": True}
    assert _pooler("--pooler-config", body) == want
    assert _pooler(f"--pooler-config={body}") == want
    assert _pooler("--override-pooler-config", body) == want


def test_pooler_config_dotted_form() -> None:
    got = _pooler("--pooler-config.pooling_type", "MEAN", "--pooler-config.normalize=true")
    assert got == {"pooling_type": "MEAN", "normalize": True}
    # Values that parse as JSON are JSON; others strings. Lists and numbers too.
    got = _pooler("--pooler-config.returned_token_ids", "[1, 2]", "--pooler-config.step_tag_id=7")
    assert got == {"returned_token_ids": [1, 2], "step_tag_id": 7}
    # Merged over the JSON form, whichever alias spelled either.
    got = _pooler(
        "--override-pooler-config",
        '{"normalize": false, "pooling_type": "CLS"}',
        "--pooler-config.pooling_type",
        "LAST",
    )
    assert got == {"normalize": False, "pooling_type": "LAST"}


def test_dotted_hf_overrides_nest() -> None:
    args = parse_args(["serve", "m", "--hf-overrides.rope_scaling.factor", "2.0"])
    assert _config_from(args).model.hf_overrides == {"rope_scaling": {"factor": 2.0}}


@pytest.mark.parametrize(
    "argv", [["--pooler-config.pooling_type"], ["--pooler-config.", "x"]], ids=str
)
def test_bad_dotted_flags_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        parse_args(["serve", "m", *argv])
    assert exc.value.code == 2
    assert "--pooler-config" in capsys.readouterr().err
