"""Access traces -> ordered prefetch lists (issue 6; docs/prefetch.md).

``prefetch.trace``: the trace format ``imgconv record`` writes and loads.
``prefetch.order``: the planner (core files in first-access order, then the rest by
frequency, big partly read files as chunk-aligned ranges at the end).
"""
