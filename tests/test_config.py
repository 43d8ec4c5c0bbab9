"""Sweep config: YAML -> frozen dataclasses, --set overrides, did-you-mean errors."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from compressbench.engine.config import (
    PromptVariant,
    apply_overrides,
    config_from_dict,
    is_baseline,
    load_config,
    truncate_tokens,
)
from compressbench.core.errors import ConfigError

CONFIGS = Path(__file__).resolve().parent.parent / "configs"


def base(**over):
    raw = {"models": {"m": {"backend": "hf", "model": "smollm2-135m"}}, "compressors": ["m", "identity"],
           "predictors": ["m"], "scorer": "m", "datasets": [{"kind": "synthetic"}]}
    raw.update(over)
    return raw


def test_shipped_configs_load():
    demo = load_config(CONFIGS / "demo.yaml")
    assert demo.name == "demo" and demo.scorers == ("smol",) and demo.mi_prompt == "mi_score_agnostic"
    assert demo.compressors == ("smol", "gemma", "identity", "empty", "keep:1", "keep:2", "keep:3")
    assert demo.predictors == ("smol", "gemma") and demo.mode_of("gemma") == "loglik"
    assert demo.datasets[0].spec["kind"] == "known_info"
    old = load_config(CONFIGS / "demo_longhealth.yaml")
    assert old.name == "demo-longhealth" and old.compressors == ("smol", "identity", "empty", "truncate:48")
    assert old.predictor_mode == "generate"
    ex = load_config(CONFIGS / "example_sweep.yaml")
    assert [p.label for p in ex.prompts] == ["query", "agnostic", "k_sentences:3"]
    assert ex.models["served"].backend == "openai"


def test_defaults_and_frozen():
    cfg = config_from_dict(base(), default_name="x")
    assert cfg.name == "x" and cfg.samples == 1 and cfg.prompts == (PromptVariant("query"),)
    assert cfg.on_context_overflow == "truncate" and cfg.batch_size["scorer"] == 8
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.samples = 3  # type: ignore[misc]
    # to_dict round-trips
    assert config_from_dict(cfg.to_dict()) == cfg


def test_overrides_are_yaml_parsed_and_nested(tmp_path):
    p = tmp_path / "s.yaml"
    import yaml

    p.write_text(yaml.safe_dump(base()))
    cfg = load_config(p, ["samples=4", "temperatures=[0.5, 1.0]", "max_new_tokens.compressor=16",
                          "datasets.0.seed=7", "compressors=[m, 'truncate:32']", "judge=m"], limit=3)
    assert cfg.samples == 4 and cfg.temperatures == (0.5, 1.0)
    assert cfg.max_new_tokens["compressor"] == 16 and cfg.max_new_tokens["predictor"] == 64
    assert cfg.datasets[0].spec["seed"] == 7 and cfg.limit == 3
    assert cfg.compressors == ("m", "truncate:32") and cfg.judge == "m"
    assert cfg.name == "s"
    assert apply_overrides({"a": 1}, ["b.c=x"]) == {"a": 1, "b": {"c": "x"}}


@pytest.mark.parametrize("raw, message", [
    (base(sampels=2), "did you mean 'samples'"),
    (base(models={"m": {"backend": "hf", "model": "x", "optoins": {}}}), "did you mean 'options'"),
    (base(max_new_tokens={"compresor": 3}), "did you mean 'compressor'"),
    (base(models={"m": {"backend": "hff", "model": "x"}}), "did you mean 'hf'"),
    (base(scorer="mm"), "did you mean 'm'"),
    (base(compressors=["truncate:abc"]), "truncate:<tokens>"),
    (base(compressors=["identiy"]), "did you mean 'identity'"),
    (base(predictors=["identity"]), "not a model defined"),
    (base(prompts=[{"variant": "k_sentences"}]), "integer k"),
    (base(prompts=["querry"]), "did you mean 'query'"),
    (base(samples=0), "positive integer"),
    (base(max_error_rate=2), "fraction"),
    (base(on_context_overflow="drop"), "'truncate' or 'fail'"),
    (base(datasets=[]), "datasets is empty"),
    (base(name="a b"), "name"),
])
def test_bad_configs(raw, message):
    with pytest.raises(ConfigError, match=None) as exc:
        config_from_dict(raw)
    assert message in str(exc.value)


def test_bad_files_and_overrides(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("models: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    latin = tmp_path / "latin.yaml"
    latin.write_bytes("name: caf\xe9\n".encode("latin-1"))
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_config(latin)
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    good = tmp_path / "good.yaml"
    import yaml

    good.write_text(yaml.safe_dump(base()))
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        load_config(good, ["samples"])
    with pytest.raises(ConfigError, match="list index"):
        load_config(good, ["datasets.5.seed=1"])


def test_baseline_names():
    assert is_baseline("identity") and is_baseline("empty") and is_baseline("truncate:12")
    assert not is_baseline("truncate:") and not is_baseline("m")
    assert truncate_tokens("truncate:12") == 12 and truncate_tokens("identity") is None


def test_model_info_overrides_are_validated_and_kept():
    raw = base()
    raw["models"]["m"]["info"] = {"n_params": 7.6e9, "family": "qwen2.5"}
    cfg = config_from_dict(raw)
    assert dict(cfg.models["m"].info) == {"n_params": 7.6e9, "family": "qwen2.5"}
    assert cfg.to_dict()["models"]["m"]["info"] == {"n_params": 7.6e9, "family": "qwen2.5"}
    raw["models"]["m"]["info"] = {"n_param": 1}
    with pytest.raises(ConfigError, match="did you mean 'n_params'"):
        config_from_dict(raw)
    raw["models"]["m"]["info"] = [1, 2]
    with pytest.raises(ConfigError, match="info must be a mapping"):
        config_from_dict(raw)


def test_predictor_mode_per_sweep_or_per_predictor_and_scorers():
    models = {"a": {"backend": "hf", "model": "x"}, "b": {"backend": "openai", "model": "y"}}
    cfg = config_from_dict(base(models=models, compressors=["a"], scorer="a", predictors=["a", "b"], predictor_mode="loglik"))
    assert cfg.predictor_mode == "loglik" and cfg.predictor_modes == {} and cfg.mode_of("b") == "loglik"
    mixed = config_from_dict(base(models=models, compressors=["a"], scorer="a", predictors=["a", "b"],
                                    predictor_mode={"a": "loglik"}))
    assert mixed.mode_of("a") == "loglik" and mixed.mode_of("b") == "generate"
    assert config_from_dict(mixed.to_dict()).predictor_modes == {"a": "loglik", "b": "generate"}
    two = config_from_dict(base(models=models, scorer=None, scorers=["a", "b"], compressors=["a"], predictors=["a"]))
    assert two.scorers == ("a", "b") and two.scorer == "a"
    assert config_from_dict(two.to_dict()).scorers == ("a", "b")
    for over, match in [
        ({"predictor_mode": "vote"}, "predictor_mode must be one of generate, loglik"),
        ({"predictor_mode": {"zz": "loglik"}}, "'zz', which is not a predictor"),
        ({"predictor_mode": {"m": "beam"}}, r"predictor_mode.m must be one of"),
        ({"scorers": ["m", "m"], "scorer": None}, "scorers lists a model twice"),
        ({"scorers": ["n"]}, "either scorer .* or scorers"),
        ({"mi_prompt": "mi_scor"}, "mi_prompt must be one of mi_score, mi_score_agnostic, got 'mi_scor'; did you mean 'mi_score'"),
        ({"compressors": ["m", "keep:2"]}, "keep the known slot sentences of the known_info dataset kind"),
        ({"compressors": ["m", "keep2"]}, "write keep:<k>"),
    ]:
        with pytest.raises(ConfigError, match=match):
            config_from_dict(base(**over))
    ok = config_from_dict(base(compressors=["m", "keep:2"], datasets=[{"kind": "known_info"}]))
    assert ok.compressors == ("m", "keep:2")
