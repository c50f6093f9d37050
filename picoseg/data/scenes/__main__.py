"""``python -m picoseg.data.scenes``: generate the ``scenes`` dataset (see :func:`main`)."""

from picoseg.data.scenes.generation import main

main()
