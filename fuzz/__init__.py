"""Fuzzers for gofer9p: hostile clients against a live server, and the codec alone.

Run ``python -m fuzz --help`` (see ``fuzz/README.md``).  The package is a tool
people run for minutes or hours, and the short default test run
(``tests/fuzz``) drives the same code for a few seconds each.

Modules:

* ``wire``      -- a blocking raw 9P connection that records every byte it
                   sends (so any failure can be saved and replayed), reply
                   checks shared by all fuzzers, and the reproducer file format.
* ``targets``   -- where the server runs: in this process over a socketpair,
                   a spawned ``gofer9p serve`` process, or an existing
                   ``unix:PATH`` listener; how its fds/RSS/fids are measured.
* ``stateful``  -- hypothesis state machine: valid and invalid operation
                   sequences checked against a model of the tree.
* ``frames``    -- malformed-frame fuzzer with liveness and leak checks.
* ``atheris_decode`` -- coverage-guided fuzzing of ``codec.decode``.
* ``report``    -- the JSON report every run writes.
"""
