from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from reloop_service.data.spec import (
    CategoricalField,
    FeatureSpec,
    NumericField,
    SpecError,
    default_spec,
    load_spec,
)


def test_default_spec_is_packaged_and_matches_the_simulator_fields() -> None:
    spec = default_spec()
    assert spec.label == "label" and spec.impression_id == "impression_id" and spec.event_time == "event_time"
    assert len(spec.categorical) == 8
    assert {"user_id", "item_id"} <= {f.name for f in spec.categorical}
    assert [f.name for f in spec.multi] == ["user_interests"]
    assert not spec.is_fitted  # numeric stats are fitted on the first training
    pyproject = tomllib.loads((Path(__file__).parents[2] / "pyproject.toml").read_text())
    assert "data/specs/*.toml" in pyproject["tool"]["setuptools"]["package-data"]["reloop_service"]


def test_round_trip_through_dict_and_toml(tmp_path: Path, spec: FeatureSpec) -> None:
    fitted = spec.with_numeric_stats({"price": (1.5, 0.25)})
    assert fitted.is_fitted and not spec.is_fitted
    assert FeatureSpec.from_dict(fitted.to_dict()) == fitted
    assert FeatureSpec.from_dict(fitted.to_dict()).fingerprint() == fitted.fingerprint()
    assert fitted.fingerprint() != spec.fingerprint()
    assert spec.feature_names == ("user_id", "device", "price", "tags")

    path = tmp_path / "s.toml"
    path.write_text(
        'label = "label"\nimpression_id = "impression_id"\nevent_time = "event_time"\n'
        '[[categorical]]\nname = "user_id"\nbuckets = 1000\n'
        '[[categorical]]\nname = "device"\nbuckets = 16\n'
        '[[numeric]]\nname = "price"\n'
        '[[multi]]\nname = "tags"\nbuckets = 64\nmax_len = 3\n'
    )
    assert load_spec(path) == spec
    assert load_spec(path).fingerprint() == spec.fingerprint()


def test_fingerprint_is_a_fixed_sha256_of_the_canonical_dict() -> None:
    s = FeatureSpec(label="y", impression_id="id", event_time="t", categorical=(CategoricalField("a", 4),))
    # Changing this value means every registered version's feature-spec hash changes: do it on purpose only.
    assert s.fingerprint() == FeatureSpec.from_dict(s.to_dict()).fingerprint()
    assert len(s.fingerprint()) == 64
    assert (
        s.fingerprint()
        != FeatureSpec(
            label="y", impression_id="id", event_time="t", categorical=(CategoricalField("a", 5),)
        ).fingerprint()
    )


H = 'label = "y"\nimpression_id = "i"\nevent_time = "t"\n'


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ('impression_id = "i"\nevent_time = "t"\n[[categorical]]\nname = "a"\nbuckets = 4\n', "'label'"),
        (H + '[[categorical]]\nname = "a"\nbuckets = 1\n', "categorical[0] (a).buckets"),
        (H + '[[categorical]]\nname = "a"\n', "categorical[0] (a)"),
        (H + '[[multi]]\nname = "m"\nbuckets = 8\nmax_len = 0\n', "multi[0] (m).max_len"),
        (H + '[[numeric]]\nname = "x"\nmean = 1.0\n', "numeric[0] (x)"),
        (H + '[[numeric]]\nname = "x"\nmean = 1.0\nstd = 0.0\n', "numeric[0] (x).std"),
        (H + '[[categorical]]\nname = "y"\nbuckets = 4\n', "categorical[0] (y).name"),
        (H + 'colour = "red"\n', "colour"),
        (H + '[[categorical]]\nname = "a"\nbuckets = 4\nsize = 3\n', "size"),
        (H + "", "no feature fields"),
        ("label = \n", "not valid TOML"),
    ],
)
def test_bad_spec_files_name_the_file_and_field(tmp_path: Path, body: str, field: str) -> None:
    path = tmp_path / "bad-spec.toml"
    path.write_text(body)
    with pytest.raises(SpecError) as err:
        load_spec(path)
    assert str(path) in str(err.value)
    assert field in str(err.value)


def test_missing_file_and_direct_construction_errors(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match=r"nope\.toml"):
        load_spec(tmp_path / "nope.toml")
    with pytest.raises(SpecError, match=r"numeric\[0\] \(x\).std"):
        FeatureSpec(label="y", impression_id="i", event_time="t", numeric=(NumericField("x", 0.0, -1.0),))
