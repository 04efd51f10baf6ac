"""`smesh demo`: the seed README's tcpdump story, run live and checked.

The demo is also a test: it prints a verdict table and exits non-zero when any
expectation fails.
"""
