"""The limits of the .net language, in one place.

Each bound keeps a hostile or mistaken file from crashing or hanging the checker; none is a
design limit of real networks (the largest numbers a real net writes are seeds and image
counts, far below MAX_NUMBER). Every bound that is crossed is reported as a located NetError.
"""

from __future__ import annotations

MAX_NUMBER = 10**15  # |value| of any literal, constant or arithmetic result (exact in float64)
MAX_NUMBER_CHARS = 64  # characters in one number literal, read before it is converted
MAX_DEPTH = 200  # nesting of brackets, calls, lists and unary minus, and terms of one sum
MAX_FILE_BYTES = 4 * 2**20  # bytes read from one .net file (real nets are a few KiB)
MAX_TOKENS = 200_000  # names, numbers and symbols in one file: parsing takes seconds at most
MAX_INCLUDE_PATH = 1024  # characters in an include path
MAX_BLOCK_DEPTH = 32  # nested block uses
# Block uses, repeats and includes nested together. Each level costs the expander up to three
# Python frames; this bound leaves room under Python's recursion limit for expressions nested
# MAX_DEPTH deep inside.
MAX_NESTING = 100
MAX_LAYERS = 10_000  # a guard against `repeat 1000000`, not a design limit of real nets
MAX_GPUS = 1024  # placement walks every GPU of every layer
