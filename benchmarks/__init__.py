"""The benchmark harness: ``python -m benchmarks`` (``make bench``), described in benchmarks/README.md.

``__main__`` runs everything and prints the table; ``_workloads`` holds our workloads W1-W4 (on
any store or adapter URL), ``_peers_dbos``/``_peers_temporal``/``_peers_restate`` the same
workloads written against each peer, ``_raw`` the physical limit (one durable write),
``_servers`` the servers the harness starts, ``_report`` the table, JSON, markdown and chart,
``_baseline`` the earlier checkout that ``--baseline``/``--baseline-ref`` measures ours against.
"""
