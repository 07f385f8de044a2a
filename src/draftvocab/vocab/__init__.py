"""Stage 3 of 8 (core → chat → vocab → ...): choosing a draft vocabulary — token counts and
their artefact, the draft's FLOPs, the objective C/R/U(k), the solvers for k* and the
draft ↔ target mapping (d2t / t2d).

Imports only from `core` and `chat`; knows nothing about analyses, models or the CLI.
"""
