"""The predict body's fast check accepts exactly what the pydantic model accepts, with the same result.

``_fast_items`` answers well-formed bodies without pydantic; anything it declines goes through the
model, whose 422 names the field. So it must never accept a body the model refuses, nor read one
differently; and it should accept the ordinary well-formed ones (or every request pays pydantic).
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import orjson
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from reloop_service.data.spec import CategoricalField, FeatureSpec, MultiCategoricalField, NumericField
from reloop_service.data.transforms import _record_columns
from reloop_service.serving.schemas import PredictLimits, _fast_columns, _fast_items, predict_request_model

LIMITS = PredictLimits(max_batch=4, max_body_bytes=1 << 20, max_keys=3, max_string=6, max_list=3)

_short = st.text(alphabet='ab\u00e9"\\/', max_size=6)  # within max_string (6)
_valid_value = st.one_of(
    _short,
    st.integers(min_value=-9, max_value=9),
    st.sampled_from([2**63 - 1, -(2**63)]),
    st.floats(allow_nan=False, allow_infinity=False),
    st.booleans(),
    st.none(),
    st.lists(_short, max_size=3),  # within max_list (3)
)
_valid_item = st.fixed_dictionaries(
    {"features": st.dictionaries(_short, _valid_value, max_size=3)},  # within max_keys (3)
    optional={"impression_id": st.one_of(st.none(), st.text(alphabet="x-1", min_size=1, max_size=128))},
)
_valid_body = st.fixed_dictionaries({"items": st.lists(_valid_item, min_size=1, max_size=4)})  # max_batch 4

# One thing wrong with an otherwise valid body: the model refuses nearly all of them (JSON integers
# beyond 64 bits it reads as floats, as orjson does).
_CORRUPTIONS: dict[str, Any] = {
    "key_too_long": lambda f, it, doc: f.__setitem__("k" * 7, 1),
    "too_many_keys": lambda f, it, doc: f.update({"w": 1, "x": 2, "y": 3, "z": 4}),
    "string_too_long": lambda f, it, doc: f.__setitem__("s", "v" * 7),
    "list_too_long": lambda f, it, doc: f.__setitem__("l", ["a", "b", "c", "d"]),
    "list_of_int": lambda f, it, doc: f.__setitem__("l", ["a", 1]),
    "list_string_too_long": lambda f, it, doc: f.__setitem__("l", ["a", "v" * 7]),
    "nested_object": lambda f, it, doc: f.__setitem__("o", {"a": 1}),
    "nested_list": lambda f, it, doc: f.__setitem__("l", [["a"]]),
    "int_2_63": lambda f, it, doc: f.__setitem__("i", 2**63),
    "int_below_i64": lambda f, it, doc: f.__setitem__("i", -(2**63) - 1),
    "int_2_64": lambda f, it, doc: f.__setitem__("i", 2**64 - 1),
    "empty_id": lambda f, it, doc: it.__setitem__("impression_id", ""),
    "long_id": lambda f, it, doc: it.__setitem__("impression_id", "x" * 129),
    "int_id": lambda f, it, doc: it.__setitem__("impression_id", 5),
    "extra_item_key": lambda f, it, doc: it.__setitem__("other", 1),
    "no_features": lambda f, it, doc: it.pop("features"),
    "features_not_object": lambda f, it, doc: it.__setitem__("features", ["a"]),
    "item_not_object": lambda f, it, doc: doc["items"].append("item"),
    "too_many_items": lambda f, it, doc: doc["items"].extend([{"features": {}}] * 4),
    "extra_top_key": lambda f, it, doc: doc.__setitem__("more", 1),
    "items_not_list": lambda f, it, doc: doc.__setitem__("items", {"features": {}}),
    "no_items": lambda f, it, doc: doc.__setitem__("items", []),
}


def _corrupt(draw: st.DrawFn, doc: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """One corruption of ``_CORRUPTIONS`` applied to one item of a valid body."""
    name = draw(st.sampled_from(sorted(_CORRUPTIONS)))
    item = doc["items"][draw(st.integers(0, len(doc["items"]) - 1))]
    _CORRUPTIONS[name](item["features"], item, doc)
    return name, doc


@st.composite
def _corrupted(draw: st.DrawFn) -> tuple[str, dict[str, Any]]:
    return _corrupt(draw, draw(_valid_body))


def _model(body: bytes) -> tuple[list[dict[str, Any]], list[str | None]] | None:
    try:
        parsed = predict_request_model(LIMITS).model_validate_json(body)
    except ValidationError:
        return None
    return [dict(it.features) for it in parsed.items], [it.impression_id for it in parsed.items]


def _body_of(doc: Any) -> bytes:
    try:
        return orjson.dumps(doc)
    except (TypeError, orjson.JSONEncodeError):  # an integer beyond 64 bits: orjson does not write it
        return json.dumps(doc).encode()


@settings(max_examples=300, deadline=None)
@given(_valid_body)
def test_valid_bodies_take_the_fast_path_and_read_as_the_model_reads_them(doc: Any) -> None:
    body = _body_of(doc)
    fast = _fast_items(body, LIMITS)
    assert fast is not None, body
    assert fast == _model(body)


@settings(max_examples=600, deadline=None)
@given(_corrupted())
def test_one_thing_wrong_is_never_accepted_by_the_fast_check(case: tuple[str, Any]) -> None:
    name, doc = case
    body = _body_of(doc)
    fast = _fast_items(body, LIMITS)
    model = _model(body)
    if model is None:  # refused: the fast check must let the model answer (its 422 names the field)
        assert fast is None, (name, body)
    else:  # e.g. an integer below -2**63 that both read as a float
        assert fast is None or fast == model, (name, body)


def test_ordinary_bodies_take_the_fast_path() -> None:
    docs = [
        {"items": [{"features": {"a": "x", "b": 1.5, "c": ["t", "u"]}}]},
        {"items": [{"features": {"a": 7, "b": None, "c": True}, "impression_id": "id-1"}] * 4},
        {"items": [{"features": {}}, {"features": {"a": ""}, "impression_id": None}]},
        {"items": [{"features": {"abcdef": "abcdef", "n": -(2**63), "m": 2**63 - 1}}]},
    ]
    for doc in docs:
        body = orjson.dumps(doc)
        assert _fast_items(body, LIMITS) is not None, doc
        assert _fast_items(body, LIMITS) == _model(body)


# --- bodies read straight into columns (``_fast_columns``) -----------------------------------------
# A spec whose feature names are the keys the corruptions above use, so that corrupted bodies reach
# the column reader (``plain_record_columns``) and not only ``_fast_values``.
_SPEC = FeatureSpec(
    label="label",
    impression_id="impression_id",
    event_time="event_time",
    categorical=(CategoricalField("s", 100), CategoricalField("o", 100), CategoricalField("a", 100)),
    numeric=(NumericField("i", 0.0, 1.0), NumericField("n", 0.0, 1.0)),
    multi=(MultiCategoricalField("l", 100, 3),),
)


def _plain_body_of(values: dict[str, Any], max_keys: int) -> Any:
    item = st.fixed_dictionaries(
        {"features": st.fixed_dictionaries({}, optional=values).filter(lambda f: len(f) <= max_keys)},
        optional={"impression_id": st.one_of(st.none(), st.text(alphabet="x-1", min_size=1, max_size=128))},
    )
    return st.fixed_dictionaries({"items": st.lists(item, min_size=1, max_size=4)})


_PLAIN_VALUES = {
    "s": st.one_of(_short, st.none()),
    "o": _short,
    "i": st.one_of(st.floats(allow_nan=False, allow_infinity=False), st.none()),
    "n": st.one_of(st.integers(-9, 9), st.sampled_from([2**63 - 1, -(2**63)])),
    "l": st.lists(_short, max_size=3),
}
# "a" may hold any valid value (then the body is not plain and goes through ``_fast_values``)
_plain_body = _plain_body_of({**_PLAIN_VALUES, "a": _valid_value}, 3)
# plain values only, and at most 2 keys, so that a corruption adding a key keeps the body plain
_plainer_body = _plain_body_of(_PLAIN_VALUES, 2)


@settings(max_examples=300, deadline=None)
@given(_plain_body)
def test_bodies_read_into_columns_read_as_the_model_reads_them(doc: Any) -> None:
    body = _body_of(doc)
    fast = _fast_columns(body, LIMITS, _SPEC)
    assert fast is not None, body
    features, ids, columns = fast
    assert (features, ids) == _model(body)
    if columns is not None:  # the columns are what the general reader reads of the same features
        general = _record_columns(_SPEC, features)
        assert columns.n == general.n and columns.cat == general.cat
        assert [f for f, _ in columns.multi] == [f for f, _ in general.multi]
        assert all(np.array_equal(a, b) for (_, a), (_, b) in zip(columns.multi, general.multi, strict=True))
        assert all(
            np.array_equal(a, b, equal_nan=True)
            for a, b in zip(columns.numeric, general.numeric, strict=True)
        )


@st.composite
def _corrupted_plain(draw: st.DrawFn) -> tuple[str, dict[str, Any]]:
    return _corrupt(draw, draw(_plainer_body))


@settings(max_examples=600, deadline=None)
@given(_corrupted_plain())
def test_one_thing_wrong_is_never_accepted_by_the_column_reader(case: tuple[str, Any]) -> None:
    name, doc = case
    body = _body_of(doc)
    fast = _fast_columns(body, LIMITS, _SPEC)
    model = _model(body)
    if model is None:
        assert fast is None, (name, body)
    else:
        assert fast is None or fast[:2] == model, (name, body)


def test_plain_batches_are_read_into_columns() -> None:
    """The common shape (every key a feature, plain values) takes the column reader; a single item,
    an unknown key or a non-plain value (an integer in a categorical field) does not."""
    plain = {"s": "x", "i": 1.5, "l": ["t", "u"]}
    cases = [
        ([plain, {"s": None, "i": 2, "l": []}], True),
        ([plain], False),
        ([plain, {"s": "x", "zz": 1}], False),
        ([plain, {"s": 7}], False),
    ]
    for feats, read in cases:
        body = orjson.dumps({"items": [{"features": f} for f in feats]})
        fast = _fast_columns(body, LIMITS, _SPEC)
        assert fast is not None and (fast[2] is not None) == read, feats
        assert fast[:2] == _model(body)
