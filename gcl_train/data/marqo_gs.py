"""`MarqoGSDataset`: one MarqoGS-10M subset root, its files, streaming readers and images.

    <root>/                      marqo_gs_full_10m, marqo_gs_fashion_5m or marqo_gs_wfash_1m
      corpus_1.json, corpus_2.json
      query_{0,1}_product_id_{0,1}.csv
      query_{0,1}_product_id_{0,1}_gt_dev.json, ..._gt_test.json, ..._queries.json

The readers are `pairs` (split CSVs / parquet), `corpus` (corpora, ground truth, query
lists) and `layout` (splits, aliases, query keys); what each reads, exactly, is in their
docstrings. Every file may be gzip-compressed and start with a UTF-8 byte-order mark.
"""
from __future__ import annotations

import io
import os
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

from .corpus import iter_corpus, read_ground_truth, read_queries
from .fields import is_missing
from .jsonstream import require_file
from .layout import SPLIT_CORPUS, SPLITS, resolve_split
from .pairs import PairRecord, _decode_image_cell, iter_pairs


class MarqoGSDataset:
    """One MarqoGS subset root (e.g. `marqo_gs_wfash_1m/`): paths, streaming readers, images.

    Args:
        root: the subset directory holding `corpus_*.json` and the split files.
        image_root: where relative `image_local` paths live (default: `root`; the
            reference layout keeps images in a sibling folder such as `images_wfash/`).

    Example:
        >>> # ds = MarqoGSDataset("data/marqo_gs_wfash_1m", image_root="data/images_wfash")
        >>> # for rec in ds.iter_pairs("in_domain"): ...
    """

    def __init__(self, root: str, image_root: Optional[str] = None):
        root = os.fspath(root)
        if not os.path.isdir(root):
            raise FileNotFoundError(f"root: not a directory: {root}")
        self.root = root
        self.image_root = os.fspath(image_root) if image_root is not None else root

    def __repr__(self):
        return f"MarqoGSDataset(root={self.root!r}, image_root={self.image_root!r})"

    def _first_existing(self, stem: str, exts: Sequence[str]) -> str:
        odd = []
        for ext in exts:
            p = os.path.join(self.root, stem + ext)
            if os.path.isfile(p):
                return p
            if os.path.lexists(p):
                try:
                    require_file(p, stem + ext)
                except FileNotFoundError as e:
                    odd.append(str(e).rsplit(" (", 1)[-1].rstrip(")") + ": " + stem + ext)
        extra = f" ({'; '.join(odd)})" if odd else ""
        raise FileNotFoundError(f"none of {[stem + e for e in exts]} in {self.root}{extra}")

    def csv_path(self, split: str) -> str:
        """The split's pair file (`.csv`, `.csv.gz` or `.parquet`)."""
        return self._first_existing(resolve_split(split), (".csv", ".csv.gz", ".parquet"))

    def corpus_name(self, split: str) -> str:
        return SPLIT_CORPUS[resolve_split(split)]

    def corpus_path(self, split_or_corpus: str) -> str:
        """The corpus file a split searches (or of a corpus name such as "corpus_1")."""
        name = split_or_corpus if split_or_corpus.startswith("corpus_") else self.corpus_name(split_or_corpus)
        return self._first_existing(name, (".json", ".json.gz", ".jsonl", ".jsonl.gz"))

    def gt_path(self, split: str, which: str = "test") -> str:
        if which not in ("test", "dev"):
            raise ValueError(f"which: expected 'test' or 'dev', got {which!r}")
        return self._first_existing(f"{resolve_split(split)}_gt_{which}", (".json", ".json.gz"))

    def queries_path(self, split: str) -> str:
        return self._first_existing(f"{resolve_split(split)}_queries", (".json", ".json.gz"))

    def available_splits(self) -> List[str]:
        """Splits whose pair file exists, in the paper's order."""
        out = []
        for s in SPLITS:
            try:
                self.csv_path(s)
                out.append(s)
            except FileNotFoundError:
                pass
        return out

    def iter_pairs(self, split: str, **kwargs) -> Iterator[PairRecord]:
        """`iter_pairs` over the split's file."""
        return iter_pairs(self.csv_path(split), **kwargs)

    def iter_corpus(self, split_or_corpus: str) -> Iterator[Tuple[str, Dict[str, Any]]]:
        """`iter_corpus` over the split's (or named) corpus."""
        return iter_corpus(self.corpus_path(split_or_corpus))

    def ground_truth(self, split: str, which: str = "test") -> Dict[str, Dict[str, int]]:
        return read_ground_truth(self.gt_path(split, which))

    def queries(self, split: str) -> List[str]:
        return read_queries(self.queries_path(split))

    def image_path(self, value: str) -> str:
        """Absolute path of an `image_local` value (relative to `image_root`)."""
        return value if os.path.isabs(value) else os.path.join(self.image_root, value)

    def image_available(self, value) -> bool:
        """Cheap presence check: bytes are present, a path must exist as a file."""
        value = _decode_image_cell(value)
        if is_missing(value):
            return False
        if isinstance(value, (bytes, bytearray, memoryview)):
            return True
        if isinstance(value, str):
            return os.path.isfile(self.image_path(value))
        return True  # already an image object

    def load_image(self, value):
        """Open an image lazily: a path (relative to `image_root`), bytes, a HF
        `{"bytes", "path"}` cell, or a PIL image (returned as is). Converted to RGB.

        Raises:
            FileNotFoundError / OSError (PIL.UnidentifiedImageError) when unreadable.
        """
        from PIL import Image

        value = _decode_image_cell(value)
        if isinstance(value, Image.Image):
            return value.convert("RGB")
        if isinstance(value, (bytes, bytearray, memoryview)):
            with Image.open(io.BytesIO(bytes(value))) as im:
                return im.convert("RGB")
        if isinstance(value, str) and not is_missing(value):
            with Image.open(self.image_path(value)) as im:
                return im.convert("RGB")
        raise FileNotFoundError(f"no image in value {value!r}")

