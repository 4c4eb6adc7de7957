"""What the demo, the tests and the benchmarks run expiryd against; a replica never imports it.

:mod:`~expiryd.devtools.localcluster` starts a throwaway Redis or Valkey
Cluster on loopback, and :mod:`~expiryd.devtools.demo` is ``expiryd demo``::

    from expiryd.devtools.localcluster import LocalCluster

    with LocalCluster(primaries=3, replicas_per_primary=1) as cluster:
        print(cluster.seed_urls)
"""
