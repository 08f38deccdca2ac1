"""A synthetic MarqoGS twin: same files, same columns, learnable graded relevance.

`write_dataset(root, n_queries, n_products, docs_per_query=100, seed=0, image_size=32)`
writes, under `root`:

    corpus_1.json, corpus_2.json       {product_id: {"title": str | null, "image_local": "images/<id>.png"}}
    query_{0,1}_product_id_{0,1}.csv   query, product_id, position, title, image_local,
                                       score_linear, score_reciprocal, no_score, query_id, pair_id
    query_*_gt_test.json, _gt_dev.json {"<query>_{!@#~}_": {product_id: relevance 1..100}}
    query_*_queries.json               ["<query>", ...]
    images/<product_id>.png            image_size x image_size RGB
    synthetic_meta.json                seed, sizes, vocabularies, per-file row counts, and
                                       "intended_missing": the titles and images left out on
                                       purpose, per corpus and split (`intended_missing(root)`)

The world: every product has a category, colour, pattern, material, style, size and a
brand, plus a hidden popularity. The title spells the attributes (each word dropped with
small probability, in varying order, with brand and filler words; a few titles carry
commas, quotes or a newline, and about 1% are missing). The image shows them: the
category is the shape, the colour its fill, the pattern an overlay, the material the
background tint, the style the frame, the size the scale. A query names a category and
some other attributes; a hidden relevance function weighs the asked attributes (colour
more than pattern more than material and style, each with per-query jitter), gives
partial credit to similar colours, adds popularity and noise, and orders about
`docs_per_query` candidates (mostly of the asked category). Position p becomes
score_linear = 101 - p and score_reciprocal = 1 / p, as in MarqoGS.

Splits follow the paper: 80% of queries are training queries (query_0), 20% novel
(query_1); products fall 50/50 into two disjoint corpora (product_id_0 -> corpus_1,
product_id_1 -> corpus_2). Each split's gt_test holds up to `gt_queries` queries drawn
with the evaluation protocol's weighted sampling, gt_dev up to as many of the rest
(each takes at most half the split's queries). Relevance there is score_linear rescaled
per split file to 1..100, exactly what the evaluator would rebuild from the CSV.

Generation is linear in the number of pairs (per-query work touches only a bounded
candidate pool) and deterministic for a seed. Every file is written atomically; images
that already exist are kept, so an interrupted run can be resumed by running it again.
"""
from __future__ import annotations

import argparse
import csv
import inspect
import json
import logging
import math
import os
import sys
import time
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..fileio import atomic_write
from .layout import QUERY_KEY_SEPARATOR, SPLITS, resolve_split

log = logging.getLogger(__name__)
META_FILE = "synthetic_meta.json"

CATEGORIES = (
    "dress", "shirt", "sneakers", "handbag", "hat", "jacket", "skirt", "scarf",
    "watch", "lamp", "mug", "backpack", "sandals", "sweater", "jeans", "cushion",
)
COLOURS = ("red", "blue", "green", "yellow", "black", "white", "pink", "purple", "orange", "brown", "grey", "teal")
COLOUR_RGB = {
    "red": (210, 30, 35), "blue": (30, 70, 200), "green": (40, 160, 60), "yellow": (240, 210, 40),
    "black": (20, 20, 20), "white": (245, 245, 245), "pink": (240, 130, 180), "purple": (120, 50, 160),
    "orange": (245, 140, 30), "brown": (120, 75, 40), "grey": (130, 130, 130), "teal": (20, 140, 140),
}
# colours a shopper half-accepts for one another (partial relevance credit)
COLOUR_FAMILY = {
    "red": "warm", "orange": "warm", "pink": "warm", "yellow": "warm", "brown": "earth",
    "blue": "cool", "teal": "cool", "green": "cool", "purple": "cool",
    "black": "neutral", "white": "neutral", "grey": "neutral",
}
PATTERNS = ("solid", "striped", "polka dot", "checked", "zigzag", "floral")
MATERIALS = ("cotton", "leather", "silk", "wool", "denim", "linen", "velvet")
MATERIAL_BG = {
    "cotton": (236, 232, 220), "leather": (200, 170, 140), "silk": (235, 225, 245), "wool": (215, 215, 200),
    "denim": (170, 190, 215), "linen": (225, 220, 200), "velvet": (190, 160, 190),
}
STYLES = ("casual", "formal", "vintage", "sporty", "boho")
SIZES = ("small", "medium", "large")
BRANDS = (
    "Acme", "Nordlys", "Kestrel", "Umbra", "Vantage", "Lumen", "Halcyon", "Orchard", "Pinecrest", "Rivale",
    "Solstice", "Tandem", "Verity", "Wrenfield", "Yarrow", "Zephyr", "Bellamy", "Corvid", "Dunmore", "Elara",
)
TITLE_FILLER = ("new", "2024", "women's", "men's", "unisex", "classic", "premium", "everyday", "limited edition", "sale")
QUERY_FILLER = ("", "", "", "for women", "for men", "cheap", "best", "buy", "online", "sale", "gift", "2024")
# relative importance of each attribute type in the hidden relevance function
IMPORTANCE = {"category": 3.0, "colour": 2.0, "pattern": 1.2, "material": 0.8, "style": 0.6}
ATTRS = ("category", "colour", "pattern", "material", "style")
VOCAB = {"category": CATEGORIES, "colour": COLOURS, "pattern": PATTERNS, "material": MATERIALS, "style": STYLES}
HEADER = ("query", "product_id", "position", "title", "image_local", "score_linear",
          "score_reciprocal", "no_score", "query_id", "pair_id")


@dataclass
class SyntheticInfo:
    """What `write_dataset` wrote."""

    root: str
    n_queries: int
    n_products: int
    n_pairs: int
    rows: Dict[str, int]
    gt_queries: Dict[str, Dict[str, int]]
    bytes: int
    seconds: float
    files: List[str] = field(default_factory=list)


def _check_int(name, v, lo):
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < lo:
        raise ValueError(f"{name}: expected an int >= {lo}, got {v!r}")
    return int(v)


# ----------------------------------------------------------------------------------------
# the world
# ----------------------------------------------------------------------------------------

def _make_products(rng: np.random.Generator, n: int) -> Dict[str, np.ndarray]:
    # skewed category frequencies, like a real catalogue
    cat_p = rng.dirichlet(np.full(len(CATEGORIES), 3.0))
    p = {
        "category": rng.choice(len(CATEGORIES), n, p=cat_p),
        "colour": rng.integers(0, len(COLOURS), n),
        "pattern": rng.choice(len(PATTERNS), n, p=np.array([4, 2, 1.5, 1.5, 1, 1.5]) / 11.5),
        "material": rng.integers(0, len(MATERIALS), n),
        "style": rng.integers(0, len(STYLES), n),
        "size": rng.integers(0, len(SIZES), n),
        "brand": rng.integers(0, len(BRANDS), n),
        "popularity": rng.normal(0.0, 1.0, n),
        "corpus": rng.integers(0, 2, n),  # 0 -> corpus_1, 1 -> corpus_2
    }
    # image noise: background +-12, fill +-15 per channel, centre offset +-6% of the side
    p["jitter"] = np.concatenate([rng.integers(-12, 13, (n, 3)), rng.integers(-15, 16, (n, 3)),
                                  rng.integers(-6, 7, (n, 2))], axis=1)
    ids = set()
    pid = []
    for _ in range(n):
        while True:
            s = "id-" + str(int(rng.integers(10**17, 10**19, dtype=np.uint64)))
            if s not in ids:
                ids.add(s)
                pid.append(s)
                break
    p["id"] = np.array(pid, dtype=object)
    return p


def _title(rng: np.random.Generator, p: Dict[str, np.ndarray], i: int, tricky_rate: float) -> str:
    words = []
    for a in ("style", "colour", "pattern", "material"):
        if rng.random() < 0.85:
            words.append(VOCAB[a][p[a][i]])
    if rng.random() < 0.5:
        rng.shuffle(words)
    cat = CATEGORIES[p["category"][i]]
    parts = [BRANDS[p["brand"][i]]]
    if rng.random() < 0.5:
        parts.append(TITLE_FILLER[rng.integers(len(TITLE_FILLER))])
    parts += words + [cat]
    title = " ".join(parts)
    if rng.random() < 0.6:
        title += f" - size {SIZES[p['size'][i]]}"
    r = rng.random()
    if r < tricky_rate:  # quoting a CSV reader must get right
        title = title.replace(" - ", ', "') + '"'
    elif r < 2 * tricky_rate:
        title += ', 12" wide'
    elif r < 2.3 * tricky_rate:
        title += "\nfree shipping"
    return title


def _query_text(rng: np.random.Generator, asked: Dict[str, int]) -> str:
    words = []
    for a in ("style", "colour", "pattern", "material"):
        if a in asked:
            words.append(VOCAB[a][asked[a]])
    words.append(CATEGORIES[asked["category"]])
    filler = QUERY_FILLER[rng.integers(len(QUERY_FILLER))]
    text = " ".join(words)
    if filler:
        text = f"{filler} {text}" if filler in ("cheap", "best", "buy") else f"{text} {filler}"
    return text


def _make_queries(rng: np.random.Generator, n: int, products: Dict[str, np.ndarray]) -> List[Tuple[str, Dict[str, int], Dict[str, float]]]:
    cats, counts = np.unique(products["category"], return_counts=True)
    cat_p = np.zeros(len(CATEGORIES))
    cat_p[cats] = counts
    cat_p /= cat_p.sum()
    out, seen = [], set()
    tries = 0
    while len(out) < n:
        tries += 1
        if tries > 50 * n + 1000:
            raise ValueError(f"n_queries: could not make {n} distinct queries from the attribute vocabulary")
        asked = {"category": int(rng.choice(len(CATEGORIES), p=cat_p))}
        n_extra = rng.choice(4, p=[0.15, 0.35, 0.35, 0.15])
        for a in rng.choice(["colour", "pattern", "material", "style"], size=n_extra, replace=False,
                            p=[0.4, 0.25, 0.2, 0.15]):
            asked[str(a)] = int(rng.integers(len(VOCAB[str(a)])))
        text = _query_text(rng, asked)
        if text in seen:
            continue
        seen.add(text)
        weights = {a: IMPORTANCE[a] * float(rng.uniform(0.7, 1.3)) for a in asked}
        out.append((text, asked, weights))
    return out


def _relevance(products, cand: np.ndarray, asked, weights, rng, noise: float) -> np.ndarray:
    s = np.zeros(len(cand))
    for a, v in asked.items():
        vals = products[a][cand]
        match = (vals == v).astype(np.float64)
        if a == "colour":
            fam = COLOUR_FAMILY[COLOURS[v]]
            same_family = np.array([COLOUR_FAMILY[COLOURS[c]] == fam for c in vals])
            match = np.where(match > 0, 1.0, np.where(same_family, 0.4, 0.0))
        s += weights[a] * match
    s += 0.35 * products["popularity"][cand]
    s += rng.normal(0.0, noise, len(cand))
    return s


# ----------------------------------------------------------------------------------------
# images
# ----------------------------------------------------------------------------------------

def _shape_points(cat: int, cx: float, cy: float, r: float) -> List[Tuple[float, float]]:
    # one polygon family per category: n vertices and a star depth
    n_vert = (3, 4, 5, 6, 8, 12, 4, 3, 5, 6, 8, 10, 7, 4, 9, 11)[cat]
    depth = (1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.55, 0.5, 0.5, 0.6, 0.7, 0.45, 1.0, 0.75, 0.65, 0.8)[cat]
    rot = (0.0, 0.785, 0.3, 0.0, 0.2, 0.0, 0.0, 1.05, 0.6, 0.5, 0.1, 0.0, 0.4, 0.0, 0.2, 0.3)[cat]
    pts = []
    steps = n_vert * (2 if depth < 1 else 1)
    for k in range(steps):
        ang = rot + 2 * math.pi * k / steps
        rr = r if (depth >= 1 or k % 2 == 0) else r * depth
        pts.append((cx + rr * math.cos(ang), cy + rr * math.sin(ang)))
    return pts


def render_image(products: Dict[str, np.ndarray], i: int, size: int, seed: int = 0):
    """The PIL image of product i (deterministic: all randomness is in `products`)."""
    from PIL import Image, ImageDraw

    # per-product jitter comes precomputed in `products` (one vectorised draw, not one RNG per image)
    jit = products["jitter"][i]
    bg = tuple(min(255, max(0, c + int(d))) for c, d in zip(MATERIAL_BG[MATERIALS[products["material"][i]]], jit[0:3]))
    img = Image.new("RGB", (size, size), bg)
    draw = ImageDraw.Draw(img)
    fill = tuple(min(255, max(0, c + int(d))) for c, d in zip(COLOUR_RGB[COLOURS[products["colour"][i]]], jit[3:6]))
    r = size * (0.28, 0.36, 0.44)[products["size"][i]]
    cx = size / 2 + jit[6] / 100.0 * size
    cy = size / 2 + jit[7] / 100.0 * size
    pts = _shape_points(int(products["category"][i]), cx, cy, r)
    draw.polygon(pts, fill=fill)
    # pattern overlay, clipped to the shape through a mask
    pattern = PATTERNS[products["pattern"][i]]
    if pattern != "solid":
        over = Image.new("RGB", (size, size), fill)
        od = ImageDraw.Draw(over)
        lum = 0.299 * fill[0] + 0.587 * fill[1] + 0.114 * fill[2]
        ink = (20, 20, 20) if lum > 140 else (235, 235, 235)
        step = max(3, size // 8)
        if pattern == "striped":
            for x in range(0, size, step):
                od.rectangle([x, 0, x + max(1, step // 3), size], fill=ink)
        elif pattern == "polka dot":
            for x in range(step // 2, size, step):
                for y in range(step // 2, size, step):
                    od.ellipse([x - 1, y - 1, x + 1, y + 1], fill=ink)
        elif pattern == "checked":
            for x in range(0, size, step):
                for y in range(0, size, step):
                    if ((x // step) + (y // step)) % 2 == 0:
                        od.rectangle([x, y, x + step - 1, y + step - 1], fill=ink)
        elif pattern == "zigzag":
            for y in range(0, size, step):
                od.line([(x, y + (step // 2 if (x // step) % 2 else 0)) for x in range(0, size + step, step)],
                        fill=ink, width=1)
        elif pattern == "floral":
            for x in range(step // 2, size, step * 2):
                for y in range(step // 2, size, step * 2):
                    od.ellipse([x - 2, y - 1, x + 2, y + 1], fill=ink)
                    od.ellipse([x - 1, y - 2, x + 1, y + 2], fill=ink)
        mask = Image.new("L", (size, size), 0)
        ImageDraw.Draw(mask).polygon(pts, fill=255)
        img.paste(over, (0, 0), mask)
    style = STYLES[products["style"][i]]
    w = max(1, size // 32)
    if style == "formal":
        draw.rectangle([0, 0, size - 1, size - 1], outline=(15, 15, 15), width=2 * w)
    elif style == "vintage":
        draw.rectangle([0, 0, size - 1, size - 1], outline=(150, 110, 60), width=w)
        draw.rectangle([2 * w + 1, 2 * w + 1, size - 2 - 2 * w, size - 2 - 2 * w], outline=(150, 110, 60), width=w)
    elif style == "sporty":
        draw.line([(0, size - 1 - w), (size - 1, size - 1 - w)], fill=(230, 60, 30), width=2 * w)
    elif style == "boho":
        for k in range(0, size, max(2, size // 8)):
            draw.point([(k, 0), (k, size - 1), (0, k), (size - 1, k)], fill=(180, 90, 40))
    return img


def _write_png(img, path: str) -> None:
    atomic_write(path, lambda f: img.save(f, format="PNG", optimize=False, compress_level=6), binary=True)


# ----------------------------------------------------------------------------------------
# the writer
# ----------------------------------------------------------------------------------------

@dataclass
class SyntheticWorld:
    """The generated tables, in memory, before anything is written.

    `write_dataset` writes exactly what `corpus_docs` and `split_rows` return, so tests
    can compare a read-back against them.
    """

    seed: int
    image_size: int
    products: Dict[str, np.ndarray]
    titles: List[Optional[str]]
    image_local: List[str]
    no_image: np.ndarray
    queries: List[Tuple[str, Dict[str, int], Dict[str, float]]]
    query_group: np.ndarray
    pair_query: np.ndarray
    pair_product: np.ndarray
    pair_position: np.ndarray

    @property
    def n_products(self) -> int:
        return len(self.titles)

    def corpus_docs(self, corpus: str) -> Dict[str, Dict[str, Optional[str]]]:
        """{product_id: {"title", "image_local"}} of "corpus_1" or "corpus_2"."""
        c = {"corpus_1": 0, "corpus_2": 1}[corpus]
        return {self.products["id"][i]: {"title": self.titles[i], "image_local": self.image_local[i]}
                for i in np.flatnonzero(self.products["corpus"] == c)}

    def split_pairs(self, split: str) -> np.ndarray:
        """Indices into the pair arrays that belong to a split, in write order."""
        qg, pg = int(split[6]), int(split[-1])
        return np.flatnonzero((self.query_group[self.pair_query] == qg)
                              & (self.products["corpus"][self.pair_product] == pg))

    def split_rows(self, split: str):
        """The CSV rows of a split as dicts (strings and ints as written)."""
        for j in self.split_pairs(split):
            i, pos = self.pair_product[j], int(self.pair_position[j])
            yield {
                "query": self.queries[self.pair_query[j]][0], "product_id": self.products["id"][i],
                "position": pos, "title": self.titles[i], "image_local": self.image_local[i],
                "score_linear": 101 - pos, "score_reciprocal": 1.0 / pos, "no_score": 1,
                "query_id": int(self.pair_query[j]), "pair_id": int(j),
            }

    def image(self, i: int):
        """The PIL image of product index i."""
        return render_image(self.products, i, self.image_size, self.seed)


def generate_world(
    n_queries: int = 100,
    n_products: Optional[int] = None,
    docs_per_query: int = 100,
    seed: int = 0,
    image_size: int = 32,
    missing_title_rate: float = 0.01,
    missing_image_rate: float = 0.005,
    tricky_title_rate: float = 0.01,
    progress: bool = False,
) -> SyntheticWorld:
    """Generate products, queries and ranked pairs in memory (arguments as `write_dataset`)."""
    from tqdm.auto import tqdm

    n_queries = _check_int("n_queries", n_queries, 2)
    docs_per_query = _check_int("docs_per_query", docs_per_query, 1)
    if n_products is None:
        n_products = max(2 * docs_per_query, n_queries * docs_per_query // 5)
    n_products = _check_int("n_products", n_products, 2)
    image_size = _check_int("image_size", image_size, 8)
    for name, v in (("missing_title_rate", missing_title_rate), ("missing_image_rate", missing_image_rate),
                    ("tricky_title_rate", tricky_title_rate)):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v <= 0.3:
            raise ValueError(f"{name}: expected a rate in [0, 0.3], got {v!r}")
    k = min(docs_per_query, n_products)

    rng = np.random.default_rng(seed)
    products = _make_products(rng, n_products)
    # missing title and missing image never hit the same product, so every product keeps one field
    u = rng.random(n_products)
    no_title = u < missing_title_rate
    no_image = (u >= missing_title_rate) & (u < missing_title_rate + missing_image_rate)
    trng = np.random.default_rng([seed, 1])
    titles = [None if no_title[i] else _title(trng, products, i, tricky_title_rate) for i in range(n_products)]
    image_local = [f"images/{products['id'][i]}.png" for i in range(n_products)]

    queries = _make_queries(np.random.default_rng([seed, 2]), n_queries, products)
    q_group = np.zeros(n_queries, dtype=np.int64)
    q_group[np.random.default_rng([seed, 3]).permutation(n_queries)[: n_queries - int(round(0.8 * n_queries))]] = 1

    by_cat = [np.flatnonzero(products["category"] == c) for c in range(len(CATEGORIES))]
    rrng = np.random.default_rng([seed, 4])
    n_pool = 3 * k
    pair_q = np.empty(n_queries * k, dtype=np.int64)
    pair_p = np.empty(n_queries * k, dtype=np.int64)
    pair_pos = np.empty(n_queries * k, dtype=np.int64)
    for qi, (text, asked, weights) in enumerate(tqdm(queries, desc="rank", unit="query", disable=not progress)):
        # a bounded candidate pool per query keeps generation linear in the number of pairs
        same = by_cat[asked["category"]]
        take = min(len(same), int(0.8 * n_pool))
        pool = rrng.choice(same, take, replace=False) if take < len(same) else same
        others = n_pool - len(pool)
        if others > 0:
            pool = np.unique(np.concatenate([pool, rrng.integers(0, n_products, others + 8)]))
        if len(pool) < k:
            pool = np.unique(np.concatenate([pool, rrng.permutation(n_products)[: 2 * k]]))
        score = _relevance(products, pool, asked, weights, rrng, noise=0.35)
        top = pool[np.argsort(-score, kind="stable")[:k]]
        sl = slice(qi * k, (qi + 1) * k)
        pair_q[sl] = qi
        pair_p[sl] = top
        pair_pos[sl] = np.arange(1, k + 1)
    return SyntheticWorld(seed, image_size, products, titles, image_local, no_image, queries, q_group,
                          pair_q, pair_p, pair_pos)


def write_dataset(
    root: str,
    n_queries: int = 100,
    n_products: Optional[int] = None,
    docs_per_query: int = 100,
    seed: int = 0,
    image_size: int = 32,
    gt_queries: int = 2000,
    missing_title_rate: float = 0.01,
    missing_image_rate: float = 0.005,
    tricky_title_rate: float = 0.01,
    images: bool = True,
    progress: bool = True,
) -> SyntheticInfo:
    """Write a complete synthetic MarqoGS data set under `root` (see the module docstring).

    Args:
        root: output directory (created).
        n_queries: distinct queries (80% training, 20% novel).
        n_products: products (default: max(2 * docs_per_query, n_queries * docs_per_query // 5),
            so each product appears under about five queries).
        docs_per_query: ranked products per query (capped at n_products).
        seed: everything is deterministic for a seed.
        image_size: PNG side in pixels (>= 8).
        gt_queries: cap on queries per gt_test / gt_dev file.
        missing_title_rate: products whose title is missing (null in JSON, empty in CSV).
        missing_image_rate: products whose image file is not written (absent image).
        tricky_title_rate: titles with commas, quotes or a newline.
        images: write the PNGs (False: only tabular files, for scaling runs).
        progress: tqdm bars.

    Returns:
        `SyntheticInfo` (row counts, bytes on disk, seconds).

    Example:
        >>> # info = write_dataset("/tmp/gs_tiny", n_queries=20, n_products=200, docs_per_query=30)
    """
    from tqdm.auto import tqdm

    t0 = time.perf_counter()
    gt_queries = _check_int("gt_queries", gt_queries, 1)
    world = generate_world(n_queries, n_products, docs_per_query, seed, image_size, missing_title_rate,
                           missing_image_rate, tricky_title_rate, progress)
    root = os.fspath(root)
    os.makedirs(root, exist_ok=True)
    products, queries = world.products, world.queries
    files: List[str] = []

    for name in ("corpus_1", "corpus_2"):
        path = os.path.join(root, name + ".json")

        def write_corpus(f, name=name):
            f.write("{")
            for n, (pid, doc) in enumerate(world.corpus_docs(name).items()):
                f.write(("" if n == 0 else ",\n") + json.dumps(pid) + ": " + json.dumps(doc))
            f.write("}\n")

        atomic_write(path, write_corpus)
        files.append(path)

    rows: Dict[str, int] = {}
    gt_counts: Dict[str, Dict[str, int]] = {}
    for split in SPLITS:
        qg, pg = int(split[6]), int(split[-1])
        path = os.path.join(root, split + ".csv")

        def write_split(f, split=split):
            w = csv.writer(f, quoting=csv.QUOTE_ALL, lineterminator="\n")
            w.writerow(HEADER)
            for r in world.split_rows(split):
                w.writerow([("" if r[h] is None else repr(r[h]) if isinstance(r[h], float) else r[h]) for h in HEADER])

        atomic_write(path, write_split)
        files.append(path)
        sel = world.split_pairs(split)
        rows[split] = len(sel)

        # ground truth, as the evaluator's "csv" protocol would rebuild it from this file
        sl = 101 - world.pair_position[sel]
        lo, hi = (int(sl.min()), int(sl.max())) if len(sel) else (0, 0)
        rel = np.ones(len(sel), dtype=np.int64) if hi == lo else ((sl - lo) / (hi - lo) * 99 + 1).astype(np.int64)
        per_q: Dict[int, List[Tuple[int, str]]] = {}
        for j, r in zip(sel, rel):
            per_q.setdefault(int(world.pair_query[j]), []).append((int(r), products["id"][world.pair_product[j]]))
        qids = sorted(per_q, key=lambda q: queries[q][0] + QUERY_KEY_SEPARATOR)
        sums = np.array([sum(r for r, _ in per_q[q]) for q in qids], dtype=np.float64)
        n_gt = min(gt_queries, len(qids) // 2) if len(qids) >= 2 else len(qids)
        test_idx = (np.random.RandomState(1).choice(len(qids), n_gt, replace=False, p=sums / sums.sum())
                    if 0 < n_gt < len(qids) else np.arange(len(qids)))
        rest = np.setdiff1d(np.arange(len(qids)), test_idx)
        dev_idx = np.random.default_rng([seed, 5, qg, pg]).permutation(rest)[:n_gt]
        for which, idx in (("test", test_idx), ("dev", dev_idx)):
            gt = {}
            for t in sorted(idx.tolist(), key=lambda t: -sums[t]):
                ranked = sorted(per_q[qids[t]], key=lambda x: -x[0])
                gt[queries[qids[t]][0] + QUERY_KEY_SEPARATOR] = {pid: r for r, pid in ranked}
            gpath = os.path.join(root, f"{split}_gt_{which}.json")
            atomic_write(gpath, lambda f, gt=gt: json.dump(gt, f))
            files.append(gpath)
            gt_counts.setdefault(split, {})[which] = len(gt)
        qpath = os.path.join(root, f"{split}_queries.json")
        qtexts = [queries[q][0] for q in range(len(queries)) if world.query_group[q] == qg and q in per_q]
        atomic_write(qpath, lambda f, qtexts=qtexts: json.dump(qtexts, f))
        files.append(qpath)

    if images:
        os.makedirs(os.path.join(root, "images"), exist_ok=True)
        todo = [i for i in range(world.n_products) if not world.no_image[i]]
        for i in tqdm(todo, desc="images", unit="img", disable=not progress):
            path = os.path.join(root, world.image_local[i])
            if os.path.exists(path):
                continue  # resume: images are deterministic
            _write_png(world.image(i), path)
        for i in np.flatnonzero(world.no_image):
            path = os.path.join(root, world.image_local[i])
            if os.path.exists(path):
                os.unlink(path)

    n_pairs = len(world.pair_query)
    meta = {
        "generator": "gcl_train.data.synthetic",
        "seed": seed, "n_queries": len(queries), "n_products": world.n_products,
        "docs_per_query": n_pairs // len(queries), "image_size": world.image_size, "n_pairs": n_pairs,
        "rows": rows, "gt_queries": gt_counts,
        "missing_titles": int(sum(t is None for t in world.titles)),
        "missing_images": int(world.no_image.sum()) if images else None,
        "corpus_sizes": {"corpus_1": int((products["corpus"] == 0).sum()), "corpus_2": int((products["corpus"] == 1).sum())},
        "vocabulary": {a: list(VOCAB[a]) for a in ATTRS},
        "importance": IMPORTANCE,
        "intended_missing": _intended_missing_counts(world, missing_title_rate, missing_image_rate, images),
    }
    mpath = os.path.join(root, META_FILE)
    atomic_write(mpath, lambda f: json.dump(meta, f, indent=1))
    files.append(mpath)
    total = 0
    for dirpath, _, fns in os.walk(root):
        for fn in fns:
            total += os.path.getsize(os.path.join(dirpath, fn))
    return SyntheticInfo(root, len(queries), world.n_products, n_pairs, rows, gt_counts, total,
                         time.perf_counter() - t0, files)


_FIELD_NOUN = {"title": "titles", "image": "images"}
_FIELD_ALIASES = {"title": "title", "image": "image", "image_local": "image"}


def _intended_missing_counts(world: SyntheticWorld, title_rate: float, image_rate: float,
                             images: bool) -> Dict[str, Dict[str, float]]:
    no_title = np.array([t is None for t in world.titles], dtype=bool)
    no_image = world.no_image if images else np.ones(world.n_products, dtype=bool)
    out: Dict[str, Dict[str, float]] = {
        "rates": {"title": float(title_rate), "image": float(image_rate) if images else 1.0},
    }
    for c, name in enumerate(("corpus_1", "corpus_2")):
        sel = world.products["corpus"] == c
        out[name] = {"products": int(sel.sum()), "title": int(no_title[sel].sum()), "image": int(no_image[sel].sum())}
    for split in SPLITS:
        prods = world.pair_product[world.split_pairs(split)]
        out[split] = {"rows": len(prods), "title": int(no_title[prods].sum()), "image": int(no_image[prods].sum())}
    return out


def intended_missing(root: str) -> Optional[Dict[str, Dict[str, float]]]:
    """What a synthetic data set leaves out on purpose, from its `synthetic_meta.json`.

    Returns:
        None when `root` is not a synthetic set (no meta file), predates the record, or
        its meta file is unreadable (logged). Otherwise
        {"rates": {"title": r, "image": r},
         "corpus_1": {"products": n, "title": n, "image": n}, "corpus_2": {...},
         "<split>": {"rows": n, "title": n, "image": n} for each of `SPLITS`}:
        products (corpus) or CSV rows (split) whose title is empty or whose image file
        was not written. "image" is the `image_local` field.

    Example:
        >>> # n = (intended_missing(root) or {}).get("corpus_1", {}).get("title", 0)
    """
    path = os.path.join(os.fspath(root), META_FILE)
    if not os.path.isfile(path):
        return None
    try:
        with open(path, encoding="utf-8-sig") as f:
            meta = json.load(f)
    except (OSError, ValueError) as e:
        log.warning("%s: unreadable (%s); intended missing fields unknown", path, e)
        return None
    out = meta.get("intended_missing") if isinstance(meta, dict) else None
    return out if isinstance(out, dict) else None


def intended_missing_note(root: str, scope: str, key: str) -> Optional[str]:
    """A phrase for a warning about missing fields, or None when nothing was left out on purpose.

    Args:
        root: the data set directory.
        scope: "corpus_1", "corpus_2", a split name or alias ("in_domain", ...).
        key: "title", or "image" / "image_local".

    Returns:
        e.g. "intended: the synthetic data set leaves out 4 of 203 titles in corpus_1
        (missing_title_rate 0.01)"; None for a non-synthetic set, an unknown scope or key,
        or a count of 0 (then every missing field is a real problem).

    Example:
        >>> # note = intended_missing_note(root, "corpus_1", "title")
        >>> # log.warning("%d titles missing%s", n, f" ({note})" if note else "")
    """
    info = intended_missing(root)
    field = _FIELD_ALIASES.get(key)
    if info is None or field is None:
        return None
    if not scope.startswith("corpus_"):
        try:
            scope = resolve_split(scope)
        except ValueError:
            return None
    counts = info.get(scope)
    if not isinstance(counts, dict) or not counts.get(field):
        return None
    n = counts[field]
    unit = "products" if "products" in counts else "rows"
    total = counts.get(unit)
    rate = info.get("rates", {}).get(field)
    noun = _FIELD_NOUN[field]
    if field == "image" and rate == 1.0:
        return (f"intended: the synthetic data set's images were not written (images=False / --no-images), "
                f"so all {n} {unit} in {scope} lack one")
    where = f"{noun} in {scope}" if unit == "products" else f"{noun} in {scope} ({unit})"
    return f"intended: the synthetic data set leaves out {n} of {total} {where} (missing_{field}_rate {rate})"


def build_parser() -> argparse.ArgumentParser:
    """The CLI's parser; every default comes from `write_dataset`'s signature."""
    d = {k: v.default for k, v in inspect.signature(write_dataset).parameters.items()}
    ap = argparse.ArgumentParser(prog="python -m gcl_train.data.synthetic",
                                 description="Write a synthetic MarqoGS-format data set: the layout "
                                             "gcl_train/data/pairs.py reads, used as in docs/training.md.")
    ap.add_argument("--out", required=True, metavar="DIR", help="output directory (created)")
    ap.add_argument("--queries", type=int, metavar="N", default=d["n_queries"],
                    help="distinct queries, 80%% training and 20%% novel (default: %(default)s)")
    ap.add_argument("--products", type=int, metavar="N", default=d["n_products"],
                    help="products (default: max(2 x docs-per-query, queries x docs-per-query / 5), "
                         "so each product appears under about five queries)")
    ap.add_argument("--docs-per-query", type=int, metavar="K", default=d["docs_per_query"],
                    help="ranked products per query, capped at --products (default: %(default)s)")
    ap.add_argument("--seed", type=int, metavar="INT", default=d["seed"],
                    help="every file is deterministic for a seed (default: %(default)s)")
    ap.add_argument("--image-size", type=int, metavar="PX", default=d["image_size"],
                    help="PNG side in pixels, >= 8 (default: %(default)s)")
    ap.add_argument("--gt-queries", type=int, metavar="N", default=d["gt_queries"],
                    help="cap on queries per gt_test / gt_dev file (default: %(default)s)")
    ap.add_argument("--missing-title-rate", type=float, metavar="RATE", default=d["missing_title_rate"],
                    help="products left without a title on purpose, recorded in synthetic_meta.json "
                         "(default: %(default)s)")
    ap.add_argument("--missing-image-rate", type=float, metavar="RATE", default=d["missing_image_rate"],
                    help="products whose image is not written, on purpose (default: %(default)s)")
    ap.add_argument("--tricky-title-rate", type=float, metavar="RATE", default=d["tricky_title_rate"],
                    help="titles with commas, quotes or a newline (default: %(default)s)")
    ap.add_argument("--no-images", action="store_true", help="skip the PNGs (tabular files only)")
    ap.add_argument("--quiet", action="store_true", help="no progress bars")
    return ap


def main(argv: Optional[Sequence[str]] = None) -> int:
    """CLI: python -m gcl_train.data.synthetic --out DIR --queries N [--products P] ..."""
    ap = build_parser()
    a = ap.parse_args(argv)
    try:
        info = write_dataset(a.out, a.queries, a.products, a.docs_per_query, a.seed, a.image_size,
                             a.gt_queries, a.missing_title_rate, a.missing_image_rate, a.tricky_title_rate,
                             images=not a.no_images, progress=not a.quiet)
    except ValueError as e:
        ap.error(str(e))
    print(f"wrote {info.root}: {info.n_queries} queries, {info.n_products} products, {info.n_pairs} pairs, "
          f"{info.bytes / 1e6:.1f} MB in {info.seconds:.1f} s")
    for s, n in info.rows.items():
        print(f"  {s}.csv: {n} rows, gt_test {info.gt_queries[s]['test']} / gt_dev {info.gt_queries[s]['dev']} queries")
    return 0


if __name__ == "__main__":
    sys.exit(main())
