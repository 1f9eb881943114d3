"""Data and submission formats of the wider VPR field, turned into the harness's own.

- :mod:`harness.sources.downloader`: dataset folders in the VPR-datasets-downloader layout
  (``@east@north@zone@letter@...@.jpg`` names) as splits.
- :mod:`harness.sources.msls`: Mapillary SLS in its official layout, with its protocol, and
  its prediction file (``query_key db_key1 db_key2 ...``).
- :mod:`harness.sources.builtin_folders`: the built-in splits registered from such folders.
- :mod:`harness.sources.descriptors`: VPR-methods-evaluation ``.npy`` and hloc HDF5
  descriptors converted to the harness feature file.
- :mod:`harness.sources.rankings`: ranking submissions (ranked database names per query).
- :mod:`harness.sources.predictions`: name-level prediction exports.
"""
