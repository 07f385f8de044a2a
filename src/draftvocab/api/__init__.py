"""What each command does, as one library call: the public API the CLI and users share.

Each function here takes plain arguments (paths, numbers, loaded objects), does the whole job of
one command — resolve assets, run the stages, write artefacts atomically — and returns a result
dataclass with `to_json()`. The CLI only parses options, calls one of these and renders the
result. This layer sits above every stage (core → chat → vocab → analysis → engine → interop →
api → cli) and is re-exported at the package root.
"""
