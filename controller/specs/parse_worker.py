"""The helper process of :func:`controller.specs.many.parse_many`.

Run as ``python -m controller.specs.parse_worker``: reads one pickled
``(files, max_bytes)`` from stdin, parses the files from the last to the first
with :func:`~controller.specs.parse.parse_document`, and writes the results to
stdout in batches, each a 4-byte big-endian length and a pickled list of
``(index, ParsedFile)``. Its parent kills it once the two have met.
"""

from __future__ import annotations

import gc
import pickle
import sys

from controller.specs.parse import parse_document

BATCH = 64


def main() -> int:
    gc.disable()  # a short-lived batch job: reference counting frees what it drops
    files, max_bytes = pickle.load(sys.stdin.buffer)
    out = sys.stdout.buffer
    batch: list[tuple[int, object]] = []
    try:
        for index in range(len(files) - 1, -1, -1):
            path, data = files[index]
            batch.append((index, parse_document(path, data, max_bytes=max_bytes)))
            if len(batch) == BATCH or index == 0:
                body = pickle.dumps(batch, protocol=pickle.HIGHEST_PROTOCOL)
                out.write(len(body).to_bytes(4, "big") + body)
                out.flush()
                batch = []
    except BrokenPipeError:
        return 0  # the parent has all it needs
    return 0


if __name__ == "__main__":
    sys.exit(main())
