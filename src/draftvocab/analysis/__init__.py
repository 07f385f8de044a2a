"""Stage 4 of 8 (core → chat → vocab → analysis → ...): what a vocabulary choice means —
coverage and missing tokens, stability of k*, the paper's figures, the run directory and the
HTML report.

Imports only from `core`, `chat` and `vocab`; never loads a model (that is `engine`).
"""
