"""Benchmarks: siyi-sdk against raw aiohttp and python-socketio, in one run.

Run ``scripts/bench`` (installs the ``bench`` extra first) or ``python -m benchmarks``:

- ``python -m benchmarks``            full run (about 8 minutes), writes ``benchmarks/RESULTS.md``;
- ``python -m benchmarks --quick``    under a minute, writes ``benchmarks/RESULTS-quick.md``;
- ``python -m benchmarks --smoke``    a few seconds, writes nothing (the CI smoke test);
- ``--uvloop`` adds a second pass on uvloop; ``--rows`` and ``--phases`` run a subset
  (``--phases scaleout``: several nodes on a redis-server the run starts itself;
  ``--phases stream``: small items streamed from a siyi server, against the same sent as events);
- ``PYTHONPATH=/path/to/copy python -m benchmarks ...`` measures another copy of ``siyi_sdk``
  (the workers run with ``python -P``, so the checkout's own package does not shadow it).

Layout: `runner` is the orchestrator (plans the runs, does the arithmetic, prints the tables);
`servers` and `clients` are the worker processes it starts, one per server and per client,
on 127.0.0.1 only, steered over stdin/stdout; `rows` names the table's rows; `common` holds
what they share (the payload, the event loop, stdio messages). ``PROFILE.md`` records where
siyi-sdk's time goes under load and what was changed or is proposed because of it.
"""
