"""Build a `tokenizers.Tokenizer` from the vocabulary llama.cpp stores in GGUF metadata.

Two vocabulary kinds (`tokenizer.ggml.model`):
- "gpt2": byte-level BPE. Tokens are already spelled in the GPT-2 byte alphabet and the file
  has merges; the pre-tokenizer split regex is chosen by `tokenizer.ggml.pre`, following
  llama.cpp's table for the names we know.
- "llama": SentencePiece BPE with byte fallback (`<0x0A>` tokens). Files rarely carry merges,
  so they are rebuilt from token scores: SentencePiece merges the adjacent pair whose
  concatenation has the highest score, which is what BPE ranks ordered by score reproduce.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from tokenizers import AddedToken, Regex, decoders, models, normalizers, pre_tokenizers, processors
from tokenizers import Tokenizer as Backend

from tokenfactory.models.errors import CorruptModelError, UnsupportedArchitectureError

# llama.cpp token types (tokenizer.ggml.token_type)
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6

SUPPORTED_TOKENIZER_MODELS = ("gpt2", "llama")

_GPT2_SPLIT = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
_LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)

# tokenizer.ggml.pre -> the regexes llama.cpp splits with, in order.
_PRE_SPLITS: dict[str, tuple[str, ...]] = {
    "default": (_GPT2_SPLIT,),
    "gpt-2": (_GPT2_SPLIT,),
    "gpt2": (_GPT2_SPLIT,),
    "llama3": (_LLAMA3_SPLIT,),
    "llama-v3": (_LLAMA3_SPLIT,),
    "llama-bpe": (_LLAMA3_SPLIT,),
    "smaug-bpe": (_LLAMA3_SPLIT,),
    "qwen2": (_QWEN2_SPLIT,),
    "deepseek-r1-qwen": (_QWEN2_SPLIT,),
    # One digit per pre-token, then GPT-2's regex (StarCoder's family, incl. SmolLM).
    "smollm": (r"\p{N}", _GPT2_SPLIT),
    "starcoder": (r"\p{N}", _GPT2_SPLIT),
    "refact": (r"\p{N}", _GPT2_SPLIT),
    "codeshell": (r"\p{N}", _GPT2_SPLIT),
}

# llama.cpp ignores merges for words already in the vocabulary with these pre-tokenizers.
_IGNORE_MERGES = {"llama3", "llama-v3", "llama-bpe", "smaug-bpe"}


def gguf_backend(meta: dict[str, Any]) -> Backend:
    """The tokenizer described by GGUF metadata, special tokens included."""
    kind = meta.get("tokenizer.ggml.model")
    tokens: Sequence[str] | None = meta.get("tokenizer.ggml.tokens")
    if kind is None or not tokens:
        raise CorruptModelError("the GGUF file has no tokenizer vocabulary (tokenizer.ggml.*)")
    types: Sequence[int] = meta.get("tokenizer.ggml.token_type") or [NORMAL] * len(tokens)
    tokens = _unique_spellings(tokens)
    if kind == "gpt2":
        backend = _byte_level_bpe(meta, tokens)
    elif kind == "llama":
        backend = _sentencepiece_bpe(meta, tokens, types)
    else:
        raise UnsupportedArchitectureError(
            f"GGUF tokenizer model {kind!r} is not supported; supported: "
            + ", ".join(SUPPORTED_TOKENIZER_MODELS)
        )
    _add_special_tokens(backend, tokens, types)
    backend.post_processor = _post_processor(meta, tokens, default_bos=kind == "llama")
    return backend


def _unique_spellings(tokens: Sequence[str]) -> list[str]:
    """Rename repeated spellings so every id keeps its own vocab entry (a dict cannot repeat)."""
    seen: set[str] = set()
    out = []
    for i, tok in enumerate(tokens):
        if tok in seen:
            tok = f"<tokenfactory_duplicate_{i}>"
        seen.add(tok)
        out.append(tok)
    return out


def _byte_level_bpe(meta: dict[str, Any], tokens: list[str]) -> Backend:
    vocab = {tok: i for i, tok in enumerate(tokens)}
    merges = _parse_merges(meta.get("tokenizer.ggml.merges") or [], vocab)
    pre = str(meta.get("tokenizer.ggml.pre", "default"))
    backend = Backend(models.BPE(vocab=vocab, merges=merges, ignore_merges=pre in _IGNORE_MERGES))
    splits = _PRE_SPLITS.get(pre)
    if splits is None:
        # Guessing GPT-2's regex would load fine and then split text differently from the
        # model's training: wrong tokens with no error. Refuse and name the value instead.
        raise UnsupportedArchitectureError(
            f"GGUF pre-tokenizer tokenizer.ggml.pre={pre!r} is not supported; supported: "
            + ", ".join(sorted(_PRE_SPLITS))
        )
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Split(Regex(s), behavior="isolated") for s in splits]
        + [pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]
    )
    backend.decoder = decoders.ByteLevel()
    return backend


def _parse_merges(lines: Sequence[str], vocab: dict[str, int]) -> list[tuple[str, str]]:
    merges = []
    for line in lines:
        left, sep, right = line.partition(" ")
        # tokenizers rejects a merge whose parts or result are not in the vocabulary.
        if sep and left in vocab and right in vocab and left + right in vocab:
            merges.append((left, right))
    return merges


def _sentencepiece_bpe(meta: dict[str, Any], tokens: list[str], types: Sequence[int]) -> Backend:
    vocab = {tok: i for i, tok in enumerate(tokens)}
    if meta.get("tokenizer.ggml.merges"):
        merges = _parse_merges(meta["tokenizer.ggml.merges"], vocab)
    else:
        scores = meta.get("tokenizer.ggml.scores") or [-float(i) for i in range(len(tokens))]
        merges = _merges_from_scores(tokens, scores, types)
    unk_id = meta.get("tokenizer.ggml.unknown_token_id")
    unk = tokens[unk_id] if unk_id is not None and 0 <= unk_id < len(tokens) else None
    backend = Backend(
        models.BPE(vocab=vocab, merges=merges, unk_token=unk, fuse_unk=True, byte_fallback=True)
    )
    add_space_prefix = bool(meta.get("tokenizer.ggml.add_space_prefix", True))
    # Replace spaces by U+2581; llama.cpp also prepends one to each plain-text fragment
    # (text between special tokens), which a normalizer does per fragment too.
    steps: list[normalizers.Normalizer] = [normalizers.Replace(" ", "\u2581")]
    if add_space_prefix:
        steps.insert(0, normalizers.Prepend("\u2581"))
    backend.normalizer = normalizers.Sequence(steps)
    dec = [decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse()]
    if add_space_prefix:
        dec.append(decoders.Strip(" ", 1, 0))
    backend.decoder = decoders.Sequence(dec)
    return backend


def _merges_from_scores(
    tokens: list[str], scores: Sequence[float], types: Sequence[int]
) -> list[tuple[str, str]]:
    """Every split of a normal token into two vocabulary pieces, best-scoring results first."""
    vocab = {tok: i for i, tok in enumerate(tokens) if types[i] in (NORMAL, USER_DEFINED)}
    ranked = []
    for tok, i in vocab.items():
        for k in range(1, len(tok)):
            left, right = tok[:k], tok[k:]
            if left in vocab and right in vocab:
                ranked.append((-float(scores[i]), i, vocab[left], left, right))
    ranked.sort()
    return [(left, right) for *_, left, right in ranked]


def _add_special_tokens(backend: Backend, tokens: list[str], types: Sequence[int]) -> None:
    """Control tokens are special (skipped on decode); user-defined ones are kept whole."""
    special = [
        AddedToken(tok, special=True, normalized=False)
        for tok, kind in zip(tokens, types, strict=False)
        if kind == CONTROL
    ]
    user = [
        AddedToken(tok, special=False, normalized=False)
        for tok, kind in zip(tokens, types, strict=False)
        if kind == USER_DEFINED
    ]
    if special:
        backend.add_special_tokens(special)
    if user:
        backend.add_tokens(user)


def _post_processor(
    meta: dict[str, Any], tokens: list[str], default_bos: bool
) -> processors.TemplateProcessing:
    """What encode(add_special_tokens=True) adds: BOS/EOS as the file's flags say."""
    single: list[str] = ["$A"]
    specials: list[tuple[str, int]] = []
    for key, flag, default, at_start in (
        ("bos", "add_bos_token", default_bos, True),
        ("eos", "add_eos_token", False, False),
    ):
        token_id = meta.get(f"tokenizer.ggml.{key}_token_id")
        if token_id is None or not bool(meta.get(f"tokenizer.ggml.{flag}", default)):
            continue
        tok = tokens[token_id]
        single = [tok, *single] if at_start else [*single, tok]
        specials.append((tok, int(token_id)))
    return processors.TemplateProcessing(single=single, special_tokens=specials)
