"""serve.toml and flags: precedence, validation with the key's name, worker round trip."""

from __future__ import annotations

from pathlib import Path

import pytest

from torchferry.errors import UsageError
from torchferry.serving.config import ModelOptions, ServerConfig, load_config

pytestmark = pytest.mark.unit

CONFIG = """
[server]
port = 9000
workers = 2

[defaults]
max_batch_size = 8
timeout_ms = 1000

[[models]]
source = "iris.ferry"
name = "flowers"
max_batch_size = 64

[[models]]
source = "lenet@production"
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "serve.toml"
    path.write_text(text)
    return path


def test_precedence_defaults_file_entry_flags(tmp_path: Path) -> None:
    (tmp_path / "iris.ferry").write_bytes(b"")  # relative sources resolve next to the file when they exist
    config = load_config(write(tmp_path, CONFIG), sources=["extra.ferry"], server={"port": 9100, "host": None},
                         options={"queue_size": 7, "max_delay_ms": None})  # fmt: skip
    assert (config.port, config.workers, config.host) == (9100, 2, "127.0.0.1")
    flowers, lenet, extra = config.models
    assert flowers.source == str(tmp_path / "iris.ferry") and flowers.name == "flowers"
    assert flowers.options == ModelOptions(max_batch_size=64, timeout_ms=1000, queue_size=7)
    assert lenet.source == "lenet@production" and lenet.options.max_batch_size == 8
    assert extra.options == ModelOptions(max_batch_size=8, timeout_ms=1000, queue_size=7)
    assert config.defaults == ModelOptions(max_batch_size=8, timeout_ms=1000, queue_size=7)


def test_round_trip_for_worker_processes(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, CONFIG))
    assert ServerConfig.from_dict(config.to_dict()) == config


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[server]\nprot = 1\n", r"unknown key\(s\) \['prot'\]"),
        ("[defaults]\nmax_batch = 1\n", r"\[defaults\]: unknown key\(s\) \['max_batch'\]"),
        ("[defaults]\nmax_batch_size = 0\n", "max_batch_size must be a number >= 1, got 0"),
        ("[defaults]\nqueue_size = 'many'\n", "queue_size must be a number"),
        ("[server]\nworkers = 0\n", "workers must be a number >= 1"),
        ("[server]\nport = 70000\n", "port must be 0-65535"),
        ("[[models]]\nname = 'x'\n", r"models\[0\] needs source"),
        ("models = 3\n", "must be an array of tables"),
        ("[[models]]\nsource = 'a.ferry'\nbatch = 2\n", r"models\[0\]: unknown key\(s\) \['batch'\]"),
        ("this is not toml", "is not valid TOML"),
        ("[servers]\n", r"unknown key\(s\) \['servers'\]"),
    ],
)
def test_mistakes_name_the_key(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        load_config(write(tmp_path, text))


def test_missing_file_and_bad_flag(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="does not exist"):
        load_config(tmp_path / "nope.toml")
    with pytest.raises(UsageError, match="max_delay_ms must be a number >= 0"):
        load_config(sources=["a.ferry"], options={"max_delay_ms": -1})
