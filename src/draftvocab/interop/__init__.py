"""Stage 6 of 8 (... → engine → interop → api → cli): other tools' formats — SpecForge, SGLang,
speculators and FR-Spec export and import, and retrofitting a trimmed vocabulary onto an
existing draft.

Imports only from `core`, `chat`, `vocab`, `analysis` and `engine`; never from `api` or `cli`.
"""
