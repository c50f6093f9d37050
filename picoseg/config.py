"""Small rules applied to a composed run configuration before anything is built from it."""

from __future__ import annotations

from omegaconf import DictConfig, open_dict

#: Top-level nodes whose ``none`` option is ``null``: the PiCo components that can be switched off.
OPTIONAL_COMPONENTS = ("memory", "synthesis")


def drop_disabled_settings(cfg: DictConfig) -> list[str]:
    """Turn settings of switched-off components back into ``null``.

    An experiment file may size a component (``memory.pixel_size: 2000``) that the command line
    switches off (``memory=none`` or ``loss=ce``, which set the node to ``null``). Hydra merges the
    experiment after the group choice, so the node becomes a mapping of settings without a
    ``_target_``: it describes nothing to build. Such a node means the component is off; it is
    set back to ``null`` here, and its name returned so the caller can log it.

    Args:
        cfg: the composed configuration, modified in place.

    Returns:
        The names of the nodes set to ``null``.
    """
    dropped = []
    with open_dict(cfg):
        for key in OPTIONAL_COMPONENTS:
            node = cfg.get(key)
            if isinstance(node, DictConfig) and "_target_" not in node:
                cfg[key] = None
                dropped.append(key)
    return dropped
