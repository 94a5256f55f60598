"""Reference for the ids of hashed fields (ondevice raw-feature artefacts, ``manifest["raw_inputs"]["hashing"]``).

A hashed field's id is ``1 + blake2b(utf8(token), digest_size=8) mod buckets`` with the 8-byte
digest read little-endian (id 0 is the OOV row). The token is the value's text; a number
without a fraction is written as an integer (``3.0`` -> ``"3"``); a missing value is ``""``.
Feed the ids as the artefact's ``hashed_ids`` input, in the manifest's column order.
Standard library only.
"""

from __future__ import annotations

import hashlib
from typing import Any


def token(value: Any) -> str:
    """The text a raw value is hashed as (``ondevice`` ``prepare``'s rule)."""
    if value is None:
        return ""
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="backslashreplace")
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def hash_id(value: Any, buckets: int) -> int:
    """The id of ``value`` in a field hashed into ``buckets`` buckets (in ``[1, buckets]``)."""
    digest = hashlib.blake2b(token(value).encode("utf-8"), digest_size=8).digest()
    return 1 + int.from_bytes(digest, "little") % int(buckets)


if __name__ == "__main__":
    import sys

    print(hash_id(sys.argv[1], int(sys.argv[2])))
