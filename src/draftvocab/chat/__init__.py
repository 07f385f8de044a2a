"""Stage 2 of 8 (core → chat → vocab → ...): chat datasets → conversations → the supervised
text and tokens of each conversation under any chat template.

`sources` reads files and objects, `messages` normalises records, `conversations` is the
reader, `supervision`/`template_spans`/`spans` locate what the target generates. Imports only
from `core`; knows nothing about counts, vocabularies or models.
"""
