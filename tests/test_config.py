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


from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from condlora import CondLoRAError  # noqa: E402

ANY = st.one_of(st.none(), st.booleans(), st.integers(-5, 10**6), st.floats(allow_nan=True), st.text(max_size=8),
                st.lists(st.one_of(st.integers(-3, 5), st.text(max_size=5)), max_size=3))


@settings(max_examples=300, deadline=None)
@given(r=ANY, alpha=ANY, dropout=ANY, target_modules=ANY, layers=ANY, method=ANY, seed=ANY)
def test_any_values_give_a_config_or_a_config_error(r, alpha, dropout, target_modules, layers, method, seed):
    try:
        cfg = AdapterConfig(r=r, alpha=alpha, dropout=dropout, target_modules=target_modules, layers=layers,
                            method=method, seed=seed)
    except ConfigError:
        return
    assert cfg.r > 0 and cfg.alpha > 0 and 0 <= cfg.dropout < 1
    assert AdapterConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg


@settings(max_examples=100, deadline=None)
@given(data=st.dictionaries(st.text(max_size=12), ANY, max_size=5))
def test_any_json_object_gives_a_config_or_a_clear_error(data):
    try:
        AdapterConfig.from_dict(data)
    except CondLoRAError:
        pass


FIELDS = [f for f in AdapterConfig().to_dict()]


@settings(max_examples=300, deadline=None)
@given(data=st.dictionaries(st.sampled_from(FIELDS), ANY, max_size=6))
def test_known_fields_with_any_values_give_a_config_or_a_clear_error(data):
    try:
        AdapterConfig.from_dict(data)
    except CondLoRAError:
        pass
