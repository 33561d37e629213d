"""eventalign: event-level cross-media alignment (CLIP-Event style) on open_clip + Lightning."""

__version__ = "0.1.0"
