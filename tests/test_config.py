"""AdapterConfig validation and JSON round-trip."""

import json

import pytest

from condlora import AdapterConfig, ConfigError


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("r", 0), ("r", -1), ("r", 2.5), ("alpha", 0), ("alpha", -3.0), ("dropout", 1.0), ("dropout", -0.1),
        ("method", "dora"), ("cond_form", "square"), ("init_a", "zeros"), ("target_modules", []),
        ("layers", [-1]), ("train_a", "yes"), ("format_version", 99),
    ],
)
def test_bad_values_name_the_field(field, value):
    with pytest.raises(ConfigError, match=field):
        AdapterConfig(**{field: value})


def test_round_trip_through_json():
    cfg = AdapterConfig(method="lora", r=4, alpha=16, dropout=0.1, target_modules=".*query", layers=[1, 0],
                        train_a=False, init_a="gaussian", seed=7, modules_to_save=["classifier"])
    back = AdapterConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert back == cfg
    assert back.layers == [0, 1]
    assert cfg.scaling == 4.0


def test_unknown_field_is_named():
    with pytest.raises(ConfigError, match="bogus"):
        AdapterConfig.from_dict({"r": 4, "bogus": 1})
