"""Opening a GGUF file: its metadata as plain Python values and its tensor table.

We parse the header ourselves instead of using gguf.GGUFReader: the reader builds a numpy
view for every string in the file, which costs seconds for a 50k-token vocabulary and its
merges (about 3 s for SmolLM2, more for 128k-token vocabularies); a struct-based parse takes
a fraction of that. Tensor data stays memory-mapped and is decoded by `gguf.quants`, using
the `gguf` package's type constants and block sizes.

Layout (little-endian, version 2 or 3): magic "GGUF", u32 version, u64 tensor count, u64
key/value count; key/values; tensor infos (name, dims fastest-first, type, offset); padding
to `general.alignment`; tensor data.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFValueType
from gguf.quants import quant_shape_to_byte_shape

from tokenfactory.models.errors import (
    CorruptModelError,
    ModelLoadError,
    ModelNotFoundError,
    UnsupportedQuantizationError,
)

GGUF_MAGIC = b"GGUF"
DEFAULT_ALIGNMENT = 32

_SCALAR_FORMATS = {
    GGUFValueType.UINT8: "B",
    GGUFValueType.INT8: "b",
    GGUFValueType.UINT16: "H",
    GGUFValueType.INT16: "h",
    GGUFValueType.UINT32: "I",
    GGUFValueType.INT32: "i",
    GGUFValueType.FLOAT32: "f",
    GGUFValueType.BOOL: "?",
    GGUFValueType.UINT64: "Q",
    GGUFValueType.INT64: "q",
    GGUFValueType.FLOAT64: "d",
}


@dataclass
class GGUFTensor:
    """One tensor's entry. `shape` is in ggml order (fastest dimension first)."""

    name: str
    shape: tuple[int, ...]
    tensor_type: GGMLQuantizationType
    n_elements: int
    data: np.ndarray  # raw bytes, shaped as gguf.quants.dequantize expects


@dataclass
class GGUFFile:
    """A parsed GGUF header: metadata key/values and the tensors (data memory-mapped)."""

    path: Path
    metadata: dict[str, Any]
    tensors: list[GGUFTensor]

    @property
    def architecture(self) -> str:
        return str(self.metadata.get("general.architecture", ""))

    def tensor_names(self) -> set[str]:
        return {t.name for t in self.tensors}

    def tensor(self, name: str) -> GGUFTensor | None:
        return next((t for t in self.tensors if t.name == name), None)


def is_gguf_file(path: Path) -> bool:
    """True when the file starts with the GGUF magic; the extension is not trusted."""
    try:
        with path.open("rb") as f:
            return f.read(4) == GGUF_MAGIC
    except OSError:
        return False


def open_gguf(path: str | Path) -> GGUFFile:
    """Parse a GGUF file's header; any parse failure becomes CorruptModelError."""
    path = Path(path)
    if not path.exists():
        raise ModelNotFoundError(f"model file not found: {path}")
    if not path.is_file():
        raise CorruptModelError(f"{path} is not a file")
    if not is_gguf_file(path):
        raise CorruptModelError(
            f"{path} is not a GGUF file (bad magic): it is corrupt or truncated"
        )
    try:
        # A plain ndarray view of the map: slicing a np.memmap subclass is much slower.
        mapped = np.asarray(np.memmap(path, dtype=np.uint8, mode="r"))
        return _Parser(path, mapped).parse()
    except ModelLoadError:
        raise
    # A damaged header fails as struct.error, IndexError, ValueError, UnicodeDecodeError...
    except Exception as e:  # noqa: BLE001
        raise CorruptModelError(
            f"{path} is corrupt or truncated: cannot parse its GGUF header "
            f"({type(e).__name__}: {e})"
        ) from e


class _Parser:
    def __init__(self, path: Path, mapped: np.ndarray) -> None:
        self.path = path
        self.mapped = mapped
        self.buf = memoryview(mapped.data)
        self.pos = 0
        self.endian: Literal["<", ">"] = "<"

    def _unpack(self, fmt: str) -> Any:
        value = struct.unpack_from(self.endian + fmt, self.buf, self.pos)[0]
        self.pos += struct.calcsize(fmt)
        return value

    def _string(self) -> str:
        n = self._unpack("Q")
        end = self.pos + n
        if end > len(self.buf):
            raise CorruptModelError(
                f"{self.path} is corrupt or truncated: string runs past the end"
            )
        s = bytes(self.buf[self.pos : end]).decode("utf-8", errors="replace")
        self.pos = end
        return s

    def _value(self, vtype: int) -> Any:
        vtype = GGUFValueType(vtype)
        if vtype == GGUFValueType.STRING:
            return self._string()
        if vtype == GGUFValueType.ARRAY:
            item_type = GGUFValueType(self._unpack("I"))
            count = self._unpack("Q")
            if item_type in _SCALAR_FORMATS:
                # Numeric arrays (token types, scores) in one numpy read.
                dtype = np.dtype(_SCALAR_FORMATS[item_type]).newbyteorder(self.endian)
                end = self.pos + count * dtype.itemsize
                if end > len(self.buf):
                    raise CorruptModelError(f"{self.path} is corrupt or truncated")
                values = np.frombuffer(self.buf[self.pos : end], dtype=dtype).tolist()
                self.pos = end
                return values
            return [self._value(item_type) for _ in range(count)]
        return self._unpack(_SCALAR_FORMATS[vtype])

    def parse(self) -> GGUFFile:
        self.pos = 4
        version = self._unpack("I")
        if version & 0xFFFF == 0:  # written on a big-endian host
            self.endian, self.pos = ">", 4
            version = self._unpack("I")
        if version not in (2, 3):
            raise CorruptModelError(f"{self.path}: GGUF version {version} is not supported")
        n_tensors = self._unpack("Q")
        n_kv = self._unpack("Q")
        metadata: dict[str, Any] = {}
        for _ in range(n_kv):
            key = self._string()
            metadata[key] = self._value(self._unpack("I"))
        infos = []
        for _ in range(n_tensors):
            name = self._string()
            n_dims = self._unpack("I")
            shape = tuple(self._unpack("Q") for _ in range(n_dims))
            qtype = self._unpack("I")
            offset = self._unpack("Q")
            infos.append((name, shape, qtype, offset))
        alignment = int(metadata.get("general.alignment", DEFAULT_ALIGNMENT)) or DEFAULT_ALIGNMENT
        data_start = -(-self.pos // alignment) * alignment
        tensors = [self._tensor(data_start, *info) for info in infos]
        return GGUFFile(path=self.path, metadata=metadata, tensors=tensors)

    def _tensor(
        self, data_start: int, name: str, shape: tuple[int, ...], qtype: int, offset: int
    ) -> GGUFTensor:
        try:
            tensor_type = GGMLQuantizationType(qtype)
        except ValueError as e:
            raise CorruptModelError(f"{self.path}: tensor {name!r} has unknown type {qtype}") from e
        if tensor_type not in GGML_QUANT_SIZES:
            raise UnsupportedQuantizationError(
                f"{self.path}: tensor {name!r} has type {tensor_type.name}, whose layout is unknown"
            )
        n_elements = int(np.prod(shape, dtype=np.int64)) if shape else 1
        block, type_size = GGML_QUANT_SIZES[tensor_type]
        if n_elements % block:
            raise CorruptModelError(f"{self.path}: tensor {name!r} is not whole blocks")
        n_bytes = n_elements // block * type_size
        start = data_start + offset
        if start + n_bytes > len(self.mapped):
            raise CorruptModelError(
                f"{self.path} is corrupt or truncated: "
                f"tensor {name!r} runs past the end of the file"
            )
        # numpy order is ggml's reversed; the last axis holds each row's bytes.
        byte_shape = quant_shape_to_byte_shape(tuple(reversed(shape)), tensor_type)
        data = self.mapped[start : start + n_bytes].reshape(byte_shape)
        return GGUFTensor(name, shape, tensor_type, n_elements, data)
