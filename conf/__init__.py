"""picoseg's Hydra configs, installed as the package ``picoseg.conf`` (pyproject.toml maps this
folder there), so the entry points find them with ``pkg://picoseg.conf`` from an editable install
of a clone and from a wheel alike."""
