"""
Benchmarks of the real C{twistd -n smartplug} over loopback; run with
C{make bench} (bench/run.py).  Figures, not tests: nothing here fails on a
missed target.
"""
