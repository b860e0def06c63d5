"""Prometheus metrics of one daemon, in a CollectorRegistry of its own.

A private registry (not prometheus_client's global one) keeps two mounts in one test
process, and library imports, from mixing their numbers. Counters that other parts
already keep (store, fetcher ``statistics()``) are exported through a custom collector
reading them at scrape time, so the hot paths pay nothing for observability.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

#: From a page-cache hit (~50 us) to a cold fetch over a slow link (seconds).
LATENCY_BUCKETS = (0.0001, 0.0005, 0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class _StatsCollector:
    """Reads ``statistics()`` of the store, fetcher and prefetcher at scrape time."""

    def __init__(self, sources: Callable[[], dict[str, Any]]) -> None:
        self._sources = sources

    def collect(self):
        s = self._sources()
        st, ft, pf = s.get("store"), s.get("fetcher"), s.get("prefetch")
        if ft is not None:
            c = CounterMetricFamily("imgfs_registry_requests", "Range requests to the registry",
                                    labels=["kind"])
            c.add_metric(["ondemand"], ft.requests - ft.prefetch_requests)
            c.add_metric(["prefetch"], ft.prefetch_requests)
            yield c
            c = CounterMetricFamily("imgfs_registry_bytes", "Bytes received from the registry",
                                    labels=["kind"])
            c.add_metric(["ondemand"], ft.bytes - ft.prefetch_bytes)
            c.add_metric(["prefetch"], ft.prefetch_bytes)
            yield c
            c = CounterMetricFamily("imgfs_fetch_errors", "Failed fetches", labels=["kind"])
            c.add_metric(["registry"], ft.errors)
            c.add_metric(["verify"], ft.corrupt)
            yield c
            yield GaugeMetricFamily("imgfs_fetch_inflight", "Chunks being fetched now", value=ft.inflight)
            yield CounterMetricFamily("imgfs_prefetch_fetched_chunks", "Chunks stored by prefetch requests",
                                      value=ft.prefetch_chunks)
            yield CounterMetricFamily("imgfs_prefetch_hit_chunks", "Prefetched chunks a read used later",
                                      value=ft.prefetch_hits)
            yield GaugeMetricFamily("imgfs_prefetch_hit_ratio", "Prefetched chunks read / fetched",
                                    value=ft.prefetch_hits / ft.prefetch_chunks if ft.prefetch_chunks else 0.0)
            yield GaugeMetricFamily("imgfs_prefetch_wasted_bytes", "Prefetched bytes no read used (yet)",
                                    value=ft.prefetch_wasted_bytes)
        if st is not None:
            yield CounterMetricFamily("imgfs_cache_hits", "Chunk reads served by the cache", value=st.hits)
            yield CounterMetricFamily("imgfs_cache_misses", "Chunk reads not in the cache", value=st.misses)
            yield CounterMetricFamily("imgfs_cache_evictions", "Chunks evicted", value=st.evictions)
            yield CounterMetricFamily("imgfs_cache_corrupt", "Corrupted cache entries found",
                                      value=st.corrupt)
            yield GaugeMetricFamily("imgfs_cache_bytes", "Bytes in the chunk cache", value=st.bytes)
            yield GaugeMetricFamily("imgfs_cache_entries", "Chunks in the chunk cache", value=st.entries)
        if pf is not None:
            yield GaugeMetricFamily("imgfs_prefetch_chunks_total", "Chunks planned for prefetch",
                                    value=pf.total)
            yield GaugeMetricFamily("imgfs_prefetch_chunks_done", "Prefetched chunks done", value=pf.done)
            yield GaugeMetricFamily("imgfs_prefetch_running", "1 while prefetch runs",
                                    value=1 if pf.running else 0)


class Metrics:
    """The daemon's metrics; ``render()`` gives the Prometheus text exposition."""

    def __init__(self, sources: Callable[[], dict[str, Any]] | None = None) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.read_latency = Histogram("imgfs_read_latency_seconds", "Latency of FUSE read requests",
                                      buckets=LATENCY_BUCKETS, registry=self.registry)
        self.reads = Counter("imgfs_reads", "FUSE read requests", registry=self.registry)
        self.read_bytes = Counter("imgfs_read_bytes", "Bytes returned by FUSE reads", registry=self.registry)
        self.errors = Counter("imgfs_errors", "Errors returned to FUSE callers", ["errno"],
                              registry=self.registry)
        self.push_bytes = Counter("imgfs_kernel_push_bytes", "Bytes pushed into the kernel page cache "
                                  "(warm sequential reads, FUSE notify_store)", registry=self.registry)
        self.push_failures = Counter("imgfs_kernel_push_failures", "Pushes the kernel refused",
                                     registry=self.registry)
        self.push_lent_bytes = Counter("imgfs_kernel_push_lent_bytes", "Bytes READs copied from a chunk "
                                       "a push was loading (instead of reading it again)",
                                       registry=self.registry)
        if sources is not None:
            self.registry.register(_StatsCollector(sources))

    def render(self) -> bytes:
        return generate_latest(self.registry)
