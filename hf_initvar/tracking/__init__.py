"""Q/K/V layouts per architecture, their statistics, the callback and the history store."""

from hf_initvar.tracking.layouts import (
    AttentionLayout,
    ProjectionPlacement,
    ProjectionView,
    detect_layout,
    register_layout,
    supported_model_types,
)

__all__ = [
    "AttentionLayout",
    "ProjectionPlacement",
    "ProjectionView",
    "detect_layout",
    "register_layout",
    "supported_model_types",
]
