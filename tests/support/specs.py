"""The small feature spec of the serving-side tests (two categorical fields, a numeric one, a tag list)."""

from __future__ import annotations

from reloop_service.data.spec import CategoricalField, FeatureSpec, MultiCategoricalField, NumericField

SERVING_SPEC = FeatureSpec(
    label="label",
    impression_id="impression_id",
    event_time="event_time",
    categorical=(CategoricalField("site", 101), CategoricalField("device", 11)),
    numeric=(NumericField("price", 1.0, 0.5),),
    multi=(MultiCategoricalField("tags", 51, 4),),
)
