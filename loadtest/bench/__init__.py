"""``python -m loadtest bench``: storescu and the migrator's modes, on one archive, to one receiver.

:mod:`~loadtest.bench.run` generates the archive and runs the contenders of
:mod:`~loadtest.bench.contenders` against the receivers of
:mod:`~loadtest.bench.receivers`, then the indexing baseline
(:mod:`~loadtest.bench.indexing`) and the planner at synthetic row counts
(:mod:`~loadtest.bench.scale`). :mod:`~loadtest.bench.report` prints the
tables and :mod:`~loadtest.bench.record` writes the BENCHMARKS.md section.

The package imports nothing, so that the child processes that run
:mod:`~loadtest.bench.rusage_wrapper` and
:mod:`~loadtest.bench.dcmread_baseline` start small and fast.
"""
