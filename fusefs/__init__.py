"""fusefs: the lazy-loading FUSE daemon behind ``imgfs mount`` (see docs/fusefs.md).

Layers, each behind a small interface: ``source`` (where blobs come from) ->
``fetcher`` (merged, verified range requests) -> ``store`` (node-local chunk cache) ->
``reader`` (file bytes) -> ``ops`` (the FUSE edge); ``mount`` owns the lifetime and the
nursery, ``cli`` the process. Nothing is re-exported here: importing the package must
stay cheap (pyfuse3 and trio load only when a mount runs).
"""
