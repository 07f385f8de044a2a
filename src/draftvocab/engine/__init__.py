"""Stage 5 of 8 (core → chat → vocab → analysis → engine → ...): models at work — the target,
the drafters, training, speculative decoding, latency and benchmarks, regenerating datasets,
and serving an OpenAI-compatible API.

Imports only from `core`, `chat`, `vocab` and `analysis`; file formats of other tools are
`interop`'s, commands `api`'s and `cli`'s.
"""
