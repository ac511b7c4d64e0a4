"""runtara's benchmarks: one module per scenario, run as ``python -m bench.<scenario>``.

See ``bench/README.md``. Shared machinery lives in ``bench._common`` (the
server process, scratch databases, CPU sampling, statistics and output),
``bench._workers`` (client load processes) and ``bench._limit`` (the
database's own limit, measured with the plainest possible loop).
"""
