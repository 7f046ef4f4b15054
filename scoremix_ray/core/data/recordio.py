"""InsightFace face-recognition formats, read directly (no mxnet).

RecordIO (`train.rec` + `train.idx`), as MXNet's `MXIndexedRecordIO` writes it:
  .idx  text lines "key<TAB>byte offset"
  .rec  records: uint32 magic 0xced7230a | uint32 lrec (upper 3 bits: continuation flag, lower 29: length)
        | payload | zero padding to 4 bytes.
  payload = IRHeader struct "<IfQQ" (flag, label, id, id2) [+ `flag` float32 labels if flag > 0] + image.
InsightFace's record 0 is a header whose labels (flag > 0) give (first identity record, ...): image records
are keys 1 .. label[0]-1. Without that header every key is an image.

Verification `.bin`: pickle of (list of encoded images, list of issame); pair i is images 2i, 2i+1.
"""

from __future__ import annotations

import pickle
import struct
from pathlib import Path

import numpy as np

from scoremix_ray.core.data.images import BadImage
from scoremix_ray.foundations.errors import ScoreMixError

MAGIC = 0xCED7230A
_HEADER = struct.Struct("<IfQQ")
_LEN_MASK = (1 << 29) - 1


def pack(label: float | list[float], image: bytes, id_: int = 0) -> bytes:
    """One record payload (IRHeader + image bytes), as mxnet.recordio.pack writes it."""
    if isinstance(label, (list, tuple, np.ndarray)):
        labels = np.asarray(label, dtype=np.float32)
        return _HEADER.pack(len(labels), 0.0, id_, 0) + labels.tobytes() + image
    return _HEADER.pack(0, float(label), id_, 0) + image


def unpack(payload: bytes) -> tuple[np.ndarray | float, bytes]:
    flag, label, _, _ = _HEADER.unpack_from(payload)
    body = payload[_HEADER.size :]
    if flag > 0:
        labels = np.frombuffer(body[: 4 * flag], dtype=np.float32)
        return labels, body[4 * flag :]
    return label, body


def write_indexed(rec_path: str | Path, payloads: list[bytes]) -> None:
    """Write `payloads` as records 0..n-1 with their .idx beside `rec_path`."""
    rec_path = Path(rec_path)
    lines = []
    with open(rec_path, "wb") as f:
        for key, payload in enumerate(payloads):
            lines.append(f"{key}\t{f.tell()}\n")
            f.write(struct.pack("<II", MAGIC, len(payload)))
            f.write(payload + b"\0" * (-len(payload) % 4))
    rec_path.with_suffix(".idx").write_text("".join(lines))


def read_index(rec_path: str | Path) -> dict[int, int]:
    """{key: byte offset} from the .idx beside `rec_path`; errors name the file and the line."""
    rec_path = Path(rec_path)
    idx_path = rec_path.with_suffix(".idx")
    for p in (rec_path, idx_path):
        if not p.is_file():
            raise ScoreMixError(f"RecordIO file not found: {p}")
    offsets: dict[int, int] = {}
    with open(idx_path) as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                key, off = line.split("\t")
                offsets[int(key)] = int(off)
            except ValueError:
                raise ScoreMixError(f"{idx_path}: line {n} is not 'key<TAB>offset': {line[:60]!r}") from None
    return offsets


def index_mismatch(rec_path: Path, key: int, offset: int, past_end: bool = False) -> ScoreMixError:
    where = (
        f"key {key} points past the end (offset {offset})" if past_end else f"no record at offset {offset} (key {key})"
    )
    return ScoreMixError(f"{Path(rec_path).with_suffix('.idx')} does not match {rec_path}: {where}")


def record_at(f, offset: int, rec_path: Path, key: int) -> bytes:
    """The payload of the record at `offset` of the open .rec `f`."""
    f.seek(offset)
    head = f.read(8)
    if len(head) < 8:
        raise index_mismatch(rec_path, key, offset, past_end=True)
    magic, lrec = struct.unpack("<II", head)
    if magic != MAGIC:
        raise index_mismatch(rec_path, key, offset)
    if lrec >> 29:
        raise ScoreMixError(f"{rec_path}: key {key} is a multi-part record, which is not supported")
    payload = f.read(lrec & _LEN_MASK)
    if len(payload) < lrec & _LEN_MASK:  # a download cut short: that image is bad, the others are fine
        raise BadImage(
            f"{rec_path}#{key}: record cut short ({len(payload)} of {lrec & _LEN_MASK} bytes; truncated file?)"
        )
    return payload


def write_bin(path: str | Path, images: list[bytes], issame: list[bool]) -> None:
    if len(images) != 2 * len(issame):
        raise ValueError("a .bin set needs two images per issame entry")
    with open(path, "wb") as f:
        pickle.dump((images, issame), f, protocol=pickle.HIGHEST_PROTOCOL)


class _BinUnpickler(pickle.Unpickler):
    """An unpickler that builds only what a `.bin` set holds: lists and tuples of bytes and booleans. Python 3
    pickles bytes at protocol 2 (the format's usual one) as `_codecs.encode(text, "latin1")` and bytearrays as
    `builtins.bytearray`; those two are the only names it resolves, so a crafted file cannot run code (a
    pickle's only way to call anything is through a name it looks up here)."""

    def find_class(self, module: str, name: str):
        if (module, name) == ("_codecs", "encode"):
            return _latin1
        if (module, name) == ("builtins", "bytearray"):
            return bytearray
        raise pickle.UnpicklingError(f"it refers to {module}.{name}, which a .bin set never holds")


def _latin1(text: str, encoding: str = "utf-8") -> bytes:
    if encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError(f"it encodes text as {encoding!r}, which a .bin set never does")
    return text.encode("latin1")


def check_bin_header(path: str | Path) -> Path:
    """The cheap check before any work: `path` is a file that starts like a pickle of protocol >= 2."""
    path = Path(path)
    if not path.is_file():
        raise ScoreMixError(f"verification .bin file not found: {path}")
    with open(path, "rb") as f:
        head = f.read(2)
    if len(head) < 2 or head[0] != 0x80 or not 2 <= head[1] <= 5:
        raise ScoreMixError(f"{path} is not an InsightFace .bin set (a pickle of (images, issame)): bad header")
    return path


def read_bin(path: str | Path) -> tuple[list[bytes], np.ndarray]:
    """InsightFace verification set -> (encoded images, issame bool array), read by `_BinUnpickler`."""
    path = check_bin_header(path)
    what = f"{path} is not an InsightFace .bin set (a pickle of (images, issame))"
    try:
        with open(path, "rb") as f:
            obj = _BinUnpickler(f, encoding="bytes").load()
    except pickle.UnpicklingError as e:
        raise ScoreMixError(f"{what}: refused, {e}") from None
    except Exception as e:  # noqa: BLE001 -- any other unpickling failure means "not a .bin set"
        raise ScoreMixError(f"{what}: {type(e).__name__}: {e}") from None
    if not isinstance(obj, (tuple, list)) or len(obj) != 2 or not all(isinstance(o, (tuple, list)) for o in obj):
        raise ScoreMixError(f"{what}: it holds a {type(obj).__name__}")
    bins, issame = obj
    if not all(isinstance(b, (bytes, bytearray)) for b in bins):
        raise ScoreMixError(f"{what}: an image entry is not bytes")
    if not all(isinstance(v, bool) for v in issame):
        raise ScoreMixError(f"{what}: an issame entry is not a boolean")
    if len(bins) != 2 * len(issame):
        raise ScoreMixError(f"{path}: {len(bins)} images for {len(issame)} pairs (need exactly two per pair)")
    return [bytes(b) for b in bins], np.asarray(issame, dtype=bool)
