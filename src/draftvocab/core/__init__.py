"""Stage 1 of 8 (core → chat → vocab → analysis → engine → interop → api → cli): what every
stage shares — the user-facing error, atomic artefact writes, interrupt handling, local
tokenizer/config assets and the package version.

Imports nothing from draftvocab outside `core`; knows nothing about chats, vocabularies or
models. `tests/test_architecture.py` enforces the stage order.
"""
