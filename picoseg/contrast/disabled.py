"""The ``none`` option of a PiCo component group (``memory=none``, ``synthesis=none``).

A switched-off component is still a config node, with :func:`disabled` as its target, so an
experiment that sizes the component (``memory.pixel_size: 2000``) composes with ``memory=none``
without any repair: the sizes land in the node, :func:`disabled` accepts them, logs that they are
not used, and builds nothing.
"""

from __future__ import annotations

import logging
from typing import Any

__all__ = ["disabled"]

log = logging.getLogger(__name__)


def disabled(component: str, **settings: Any) -> None:
    """Build a switched-off component: nothing.

    Args:
        component: Which component (``memory``, ``synthesis``), for the log line.
        **settings: Settings the run configuration gave it anyway (e.g. from an experiment).

    Returns:
        ``None``, what :class:`~picoseg.system.SegmentationSystem` and
        :class:`~picoseg.contrast.PixelContrastLoss` take for an absent component.
    """
    if settings:
        log.info("%s is switched off: its settings %s are not used", component, sorted(settings))
    return None
