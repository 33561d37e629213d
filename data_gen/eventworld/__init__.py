"""EventWorld: a procedural, fully annotated world of news-like event images for the 8 M2E2 event types.

`render_sample(index, seed)` draws one scene and returns an `align.schema.Sample` (JPEG bytes, news-style
caption, gold event with argument spans and boxes, one annotation region per visible object). A sample
depends only on (seed, index, options), so rendering can be split over processes and resumed.
"""

from data_gen.eventworld.captions import VISIBLE_TYPES, visible_alternatives
from data_gen.eventworld.render import WORLD_VERSION, event_type_for, render_sample, render_scene
from data_gen.eventworld.scene import EVENT_TYPES, Scene, build_scene

__all__ = [
    "EVENT_TYPES", "VISIBLE_TYPES", "WORLD_VERSION", "Scene", "build_scene", "event_type_for", "render_sample",
    "render_scene", "visible_alternatives",
]
