"""gcl_train.data: field specs, streaming readers, every bad-file case, flat memory."""
import base64
import csv
import io
import json
import os
import tracemalloc

import numpy as np
import pytest

from gcl_train.data import (
    DEFAULT_LEFT,
    DEFAULT_RIGHT,
    DataFormatError,
    MarqoGSDataset,
    ReadStats,
    SPLIT_CORPUS,
    SPLITS,
    fuse_embeddings,
    is_missing,
    iter_corpus,
    iter_pairs,
    parse_field_specs,
    query_key,
    read_ground_truth,
    read_queries,
    renormalized_weights,
    resolve_split,
    split_query_key,
)
from gcl_train.data.jsonstream import iter_json_members

HEADER = "query,product_id,position,title,image_local,score_linear,score_reciprocal,no_score,query_id,pair_id\n"


def write(path, text, mode="w"):
    with open(path, mode, **({} if "b" in mode else {"encoding": "utf-8", "newline": ""})) as f:
        f.write(text)
    return str(path)


# ---------------------------------------------------------------------------------------
# field specs
# ---------------------------------------------------------------------------------------

def test_default_specs_are_the_reference_flags():
    assert [(s.key, s.kind, s.weight) for s in DEFAULT_LEFT] == [("query", "txt", 1.0)]
    assert [(s.key, s.kind, s.weight) for s in DEFAULT_RIGHT] == [("image_local", "img", 0.9), ("title", "txt", 0.1)]


@pytest.mark.parametrize("keys,kinds,weights", [
    ("['image_local', 'title']", "['img', 'txt']", "[0.9, 0.1]"),
    ("image_local,title", "img,txt", "0.9,0.1"),
    (["image_local", "title"], ("img", "txt"), (0.9, 0.1)),
])
def test_parse_field_specs_forms(keys, kinds, weights):
    assert parse_field_specs(keys, kinds, weights) == DEFAULT_RIGHT


@pytest.mark.parametrize("args,match", [
    (("a,b", "txt", None), "kinds"),
    (("a", "txt", "1,2"), "weights"),
    (("a", "pdf", None), "kind"),
    (("a", "txt", "-1"), "weight"),
    (("a,a", "txt,txt", None), "distinct"),
    (("a", "txt", "0"), "positive sum"),
    (("['a'", "txt", None), "keys"),
    (("", "", None), "keys"),
])
def test_parse_field_specs_errors(args, match):
    with pytest.raises(ValueError, match=match):
        parse_field_specs(*args)


def test_missing_values_and_renormalisation():
    assert [is_missing(v) for v in (None, float("nan"), "", "  ", "NaN", "null", "x", 0, b"", b"1")] == \
        [True, True, True, True, True, True, False, False, True, False]
    assert is_missing({"bytes": None, "path": None}) and not is_missing({"bytes": b"x", "path": None})
    np.testing.assert_allclose(renormalized_weights(DEFAULT_RIGHT, [True, True]), [0.9, 0.1])
    np.testing.assert_allclose(renormalized_weights(DEFAULT_RIGHT, [False, True]), [0.0, 1.0])
    np.testing.assert_allclose(renormalized_weights(DEFAULT_RIGHT, [False, False]), [0.0, 0.0])


def test_fuse_embeddings_is_weighted_mean_of_unit_vectors():
    rng = np.random.default_rng(0)
    v = rng.normal(size=(5, 2, 8))
    w = np.array([[0.9, 0.1], [0.0, 1.0], [1.0, 0.0], [0.5, 0.5], [0.0, 0.0]])
    out = fuse_embeddings(v, w)
    unit = v / np.linalg.norm(v, axis=-1, keepdims=True)
    ref = (w[:, :, None] * unit).sum(1)
    ref[:4] /= np.linalg.norm(ref[:4], axis=-1, keepdims=True)
    np.testing.assert_allclose(out, ref, atol=1e-6)
    np.testing.assert_allclose(out[1], unit[1, 1], atol=1e-6)  # missing image: the title alone
    assert not out[4].any()
    with pytest.raises(ValueError, match="weights"):
        fuse_embeddings(v, w[:, :1])


def test_numpy_fusion_matches_gcl_kernels_fuse_fields():
    torch = pytest.importorskip("torch")
    kernels = pytest.importorskip("gcl_kernels")
    if not hasattr(kernels, "fuse_fields"):
        from gcl_kernels.weights import fuse_fields
    else:
        fuse_fields = kernels.fuse_fields
    rng = np.random.default_rng(1)
    v = rng.normal(size=(6, 2, 5))
    present = rng.random((6, 2)) > 0.3
    present[:, 0] |= ~present[:, 1]  # every row keeps a field
    w = np.stack([renormalized_weights(DEFAULT_RIGHT, p) for p in present])
    ours = fuse_embeddings(v, w)
    theirs = fuse_fields(torch.from_numpy(v).permute(1, 0, 2).contiguous(), [0.9, 0.1], torch.from_numpy(present))
    np.testing.assert_allclose(ours, theirs.numpy(), atol=1e-6)


def test_split_names_and_query_keys():
    assert resolve_split("zero_shot") == "query_1_product_id_1"
    assert [SPLIT_CORPUS[s] for s in SPLITS] == ["corpus_1", "corpus_1", "corpus_2", "corpus_2"]
    with pytest.raises(ValueError, match="split"):
        resolve_split("train")
    assert query_key(["red dress"]) == "red dress"
    k = query_key(["a", "b"])
    assert k == "a_{!@#~}_b_{!@#~}_" and split_query_key(k, 2) == ["a", "b"]


# ---------------------------------------------------------------------------------------
# CSV
# ---------------------------------------------------------------------------------------

def test_csv_rows_are_typed_and_quoted_fields_survive(tmp_path):
    rows = [
        ["red dress", "id-1", "1", 'Acme "Best" dress, red\nfree shipping', "images/id-1.png", "100", "1.0", "1", "7", "0"],
        ["red dress", "id-2", "2", "", "images/id-2.png", "99", "0.5", "1", "7", "1"],
        ["blue hat", "id-3", "1", "Hat, blue", "", "100", "1.0", "", "8", "2"],
    ]
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(HEADER.strip().split(","))
    w.writerows(rows)
    path = write(tmp_path / "s.csv", buf.getvalue())
    stats = ReadStats()
    recs = list(iter_pairs(path, optional=("title", "image_local"), stats=stats))
    assert [r.product_id for r in recs] == ["id-1", "id-2", "id-3"]
    assert recs[0].title == 'Acme "Best" dress, red\nfree shipping'
    assert recs[0].position == 1 and recs[0].score_linear == 100.0 and recs[0].score_reciprocal == 1.0
    assert recs[1].title is None and recs[2].image_local is None and recs[2].no_score is None
    assert recs[0].query_id == "7" and recs[2].pair_id == "2"
    # line numbers are physical lines: row 1 spans lines 2-3
    assert [r.line for r in recs] == [2, 4, 5]
    assert stats.rows == 3 and stats.yielded == 3 and stats.missing == {"title": 1, "image_local": 1}


def test_unknown_columns_go_to_extra_and_bom_is_stripped(tmp_path):
    path = write(tmp_path / "s.csv", "\ufeffquery,product_id,colour\nq,p,red\n")
    rec = next(iter_pairs(path))
    assert rec.extra == {"colour": "red"} and rec.get("colour") == "red" and rec.get("title", "-") == "-"


def test_missing_required_field_is_counted_with_lines_not_silently_dropped(tmp_path, caplog):
    path = write(tmp_path / "s.csv", HEADER + 'q,id-1,1,t,i,100,1,1,1,1\n,id-2,2,t,i,99,0.5,1,1,2\nq,,3,t,i,98,0.3,1,1,3\nq,id-4,4,,i,97,0.25,1,1,4\n')
    stats = ReadStats()
    recs = list(iter_pairs(path, stats=stats))
    assert [r.product_id for r in recs] == ["id-1", "id-4"]
    assert stats.skipped == {"missing required field 'query'": 1, "missing required field 'product_id'": 1}
    assert stats.examples["missing required field 'query'"] == [3]
    assert "left out 1 rows: missing required field 'query'" in stats.summary()
    assert "2 left out" in caplog.text
    # a field the caller requires
    stats = ReadStats()
    assert [r.product_id for r in iter_pairs(path, required=("query", "product_id", "title"), stats=stats)] == ["id-1"]
    assert stats.skipped["missing required field 'title'"] == 1
    with pytest.raises(DataFormatError, match=r"s\.csv:3: missing required field 'query'"):
        list(iter_pairs(path, on_missing="raise"))


BAD_CSV = [
    ("", r":1: empty file"),
    ("query,title\nq,t\n", r":1: header has no 'product_id' column"),
    ("query,product_id,query\nq,p,q\n", r":1: duplicate column"),
    (HEADER + "q,p,1,t,i,100,1,1,1,1\nq,p,2,t,i,99\n", r":3: expected 10 cells"),
    (HEADER + "q,p,1,t,i,100,1,1,1,1\nq,p,2,t,i,high,1,1,1,2\n", r":3: column 'score_linear': expected a number"),
    (HEADER + "q,p,1.5,t,i,100,1,1,1,1\n", r":2: column 'position': expected an integer"),
    (HEADER + 'q,p,1,"unterminated,i,100,1,1,1,1\n', r":2: malformed CSV"),
    (HEADER + 'q,p,1,"a"b,i,100,1,1,1,1\n', r":2: malformed CSV"),
]


@pytest.mark.parametrize("text,match", BAD_CSV)
def test_bad_csv_names_file_and_line(tmp_path, text, match):
    path = write(tmp_path / "bad.csv", text)
    with pytest.raises(DataFormatError, match=r"bad\.csv" + match):
        list(iter_pairs(path))


def test_bad_csv_encoding_names_file_and_line(tmp_path):
    path = write(tmp_path / "bad.csv", (HEADER + "q,p,1,t,i,100,1,1,1,1\nq,p,2,\xff\xfe,i,9,1,1,1,2\n").encode("latin-1"), "wb")
    with pytest.raises(DataFormatError, match=r"bad\.csv:\d+: not valid UTF-8"):
        list(iter_pairs(path))


def test_missing_file_raises_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.csv"):
        list(iter_pairs(str(tmp_path / "nope.csv")))


def test_gzip_csv_and_image_bytes_columns(tmp_path):
    import gzip

    from PIL import Image

    png = io.BytesIO()
    Image.new("RGB", (4, 4), (255, 0, 0)).save(png, format="PNG")
    uri = "data:image/png;base64," + base64.b64encode(png.getvalue()).decode()
    with gzip.open(tmp_path / "query_0_product_id_0.csv.gz", "wt", encoding="utf-8", newline="") as f:
        f.write(f'query,product_id,image\nq,p,"{uri}"\n')
    ds = MarqoGSDataset(str(tmp_path))
    rec = next(ds.iter_pairs("in_domain"))
    assert rec.image == png.getvalue()
    assert ds.image_available(rec.image) and ds.load_image(rec.image).getpixel((0, 0)) == (255, 0, 0)
    assert ds.load_image({"bytes": png.getvalue(), "path": None}).size == (4, 4)  # a Hugging Face cell
    path = write(tmp_path / "b.csv", "query,product_id,image\nq,p,\"data:image/png;base64,@@@\"\n")
    with pytest.raises(DataFormatError, match=r"b\.csv:2: column 'image': invalid base64"):
        list(iter_pairs(path))


def test_parquet_hugging_face_copy(tmp_path, caplog):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    table = pa.table({"query": ["q", None, "q"], "product_id": ["p1", "p2", "p3"], "score_linear": [100, 99, 98],
                      "title": ["t", "t", None],
                      "image": [{"bytes": b"\x89PNG", "path": "x.png"}, {"bytes": None, "path": None}, None]})
    path = str(tmp_path / "s.parquet")
    pq.write_table(table, path)
    stats = ReadStats()
    recs = list(iter_pairs(path, optional=("title",), stats=stats))
    assert [r.product_id for r in recs] == ["p1", "p3"]
    assert recs[0].image == b"\x89PNG" and recs[0].score_linear == 100.0
    # the same accounting as the CSV reader: skips, missing optional fields, yielded rows, a warning
    assert stats.n_skipped == 1 and stats.rows == 3 and stats.yielded == 2 and stats.missing["title"] == 1
    assert "1 left out" in caplog.text


# ---------------------------------------------------------------------------------------
# corpus JSON
# ---------------------------------------------------------------------------------------

def test_json_member_streaming_equals_json_load_at_every_chunk_size(tmp_path):
    rng = np.random.default_rng(0)
    doc = {f"id-{i}": {"title": "t\u00e9\u4e2d \\\"q\" , } ] {" * int(rng.integers(0, 3)), "n": float(rng.normal()),
                       "big": int(rng.integers(0, 10**12)), "l": [1, None, True], "e": {}} for i in range(50)}
    path = write(tmp_path / "c.json", json.dumps(doc, indent=int(rng.integers(0, 3))))
    for chunk in (1, 3, 7, 64, 1 << 20):
        got = {k: v for k, v, _ in iter_json_members(path, chunk=chunk)}
        assert got == doc and list(got) == list(doc)
    lst = [{"product_id": k, **v} for k, v in doc.items()]
    path = write(tmp_path / "l.json", json.dumps(lst))
    assert [v for _, v, _ in iter_json_members(path, chunk=5)] == lst


def test_corpus_shapes(tmp_path):
    docs = {"id-1": {"title": "a", "image_local": "x.png"}, "id-2": {"title": None, "image_local": "y.png"}}
    p1 = write(tmp_path / "corpus_1.json", json.dumps(docs))
    p2 = write(tmp_path / "c_list.json", json.dumps([{"product_id": k, **v} for k, v in docs.items()]))
    p3 = write(tmp_path / "c.jsonl", "\n".join(json.dumps({"id": k, **v}) for k, v in docs.items()) + "\n\n")
    assert dict(iter_corpus(p1)) == docs
    assert {k: {f: v[f] for f in ("title", "image_local")} for k, v in iter_corpus(p2)} == docs
    assert [k for k, _ in iter_corpus(p3)] == ["id-1", "id-2"]
    assert list(iter_corpus(write(tmp_path / "e.json", " {} "))) == []


BAD_JSON = [
    ("", r":1: empty file"),
    ('"just a string"', r":1: expected a top-level JSON object or array"),
    ('{"a": {"title": "x"},\n "b": {"title": "y"\n', r":3: invalid JSON in the value of 'b' \(which starts at line 2\)"),
    ('{"a": {"title": "x"}\n "b": {}}', r":2: expected ',' or '}'"),
    ('{"a": {"title": "x"},\n\n "b": 5}', r":3: expected a product object"),
    ('{"a": {}, "a": {}}', r":1: duplicate product id 'a'"),
    ('[{"title": "no id"}]', r":1: product record has none of the id keys"),
    ('{"a": {}} trailing', r":1: unexpected data after"),
    ('{a: {}}', r":1: expected a quoted member name"),
]


@pytest.mark.parametrize("text,match", BAD_JSON)
def test_bad_corpus_names_file_and_line(tmp_path, text, match):
    path = write(tmp_path / "corpus_1.json", text)
    with pytest.raises(DataFormatError, match=r"corpus_1\.json" + match):
        list(iter_corpus(path))


def test_bad_jsonl_line(tmp_path):
    path = write(tmp_path / "c.jsonl", '{"id": "a"}\n{"id": \n')
    with pytest.raises(DataFormatError, match=r"c\.jsonl:2: invalid JSON line"):
        list(iter_corpus(path))


# ---------------------------------------------------------------------------------------
# ground truth and queries
# ---------------------------------------------------------------------------------------

def test_ground_truth_shapes(tmp_path):
    expected = {"red dress": {"id-1": 100, "id-2": 50}, "hat": {"id-3": 1}}
    variants = [
        {"red dress_{!@#~}_": {"id-1": 100, "id-2": 50.2}, "hat_{!@#~}_": {"id-3": 1}},
        {"red dress": [["id-1", 100], ["id-2", 50]], "hat": ["id-3"]},
        [{"query": "red dress", "product_id": "id-1", "score": 100}, {"query": "red dress", "product_id": "id-2", "relevance": 50},
         {"query": "hat", "product_id": "id-3"}],
    ]
    for i, v in enumerate(variants):
        path = write(tmp_path / f"gt{i}.json", json.dumps(v))
        assert read_ground_truth(path) == expected, v
    # a multi-field key keeps its separators
    path = write(tmp_path / "gtm.json", json.dumps({"a_{!@#~}_b_{!@#~}_": {"x": 1}}))
    assert list(read_ground_truth(path)) == ["a_{!@#~}_b_{!@#~}_"]


@pytest.mark.parametrize("data,match", [
    ({"q": {"d": "high"}}, "numeric relevance"),
    ({"q": {"d": -1}}, ">= 0"),
    ({"q": 5}, "expected an object or a list"),
    ({"q": [{"d": 1}]}, "product ids or"),
    ([{"product_id": "d"}], "with 'query'"),
    ("text", "object or array"),
])
def test_bad_ground_truth(tmp_path, data, match):
    path = write(tmp_path / "gt.json", json.dumps(data))
    with pytest.raises(DataFormatError, match=r"gt\.json: .*" + match):
        read_ground_truth(path)


def test_ground_truth_invalid_json_has_line(tmp_path):
    path = write(tmp_path / "gt.json", '{"q": {"d": 1},\n "r": }')
    with pytest.raises(DataFormatError, match=r"gt\.json:2: invalid JSON"):
        read_ground_truth(path)


def test_queries_shapes(tmp_path):
    for i, v in enumerate([["a", "b"], [{"query": "a"}, {"query": "b"}], {"1": "a", "2": "b"}, {"a_{!@#~}_": 3, "b": 4}]):
        assert read_queries(write(tmp_path / f"q{i}.json", json.dumps(v))) == ["a", "b"]
    with pytest.raises(DataFormatError, match="element 1"):
        read_queries(write(tmp_path / "bad.json", json.dumps(["a", 5])))


def test_dataset_paths_and_images(tmp_path):
    from PIL import Image

    (tmp_path / "imgs").mkdir()
    Image.new("RGB", (6, 6), (0, 0, 255)).save(tmp_path / "imgs" / "a.png")
    write(tmp_path / "corrupt.png", b"not a png", "wb")
    write(tmp_path / "query_1_product_id_1.csv", "query,product_id\nq,p\n")
    write(tmp_path / "corpus_2.json", "{}")
    ds = MarqoGSDataset(str(tmp_path), image_root=str(tmp_path / "imgs"))
    assert ds.available_splits() == ["query_1_product_id_1"]
    assert ds.corpus_path("zero_shot").endswith("corpus_2.json")
    with pytest.raises(FileNotFoundError, match="corpus_1"):
        ds.corpus_path("in_domain")
    assert ds.image_available("a.png") and not ds.image_available("b.png") and not ds.image_available(float("nan"))
    assert ds.load_image("a.png").getpixel((1, 1)) == (0, 0, 255)
    with pytest.raises(OSError):
        ds.load_image(str(tmp_path / "corrupt.png"))
    with pytest.raises(FileNotFoundError, match="root"):
        MarqoGSDataset(str(tmp_path / "nope"))


# ---------------------------------------------------------------------------------------
# streaming memory
# ---------------------------------------------------------------------------------------

def _write_big_csv(path, n):
    with open(path, "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f, quoting=csv.QUOTE_ALL, lineterminator="\n")
        w.writerow(HEADER.strip().split(","))
        for i in range(n):
            w.writerow([f"query {i // 100}", f"id-{i}", i % 100 + 1, f"Brand, product {i} \"x\"", f"images/id-{i}.png",
                        100 - i % 100, 1 / (i % 100 + 1), 1, i // 100, i])


def _peak_while(fn):
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_streaming_memory_stays_flat_as_files_grow(tmp_path):
    small, big = tmp_path / "small.csv", tmp_path / "big.csv"
    _write_big_csv(small, 2_000)
    _write_big_csv(big, 20_000)
    assert os.path.getsize(big) > 9 * os.path.getsize(small) and os.path.getsize(big) > 2_000_000

    def drain_csv(p):
        return lambda: sum(1 for _ in iter_pairs(str(p)))

    peak_small = _peak_while(drain_csv(small))
    peak_big = _peak_while(drain_csv(big))
    # a reader that held the rows would grow 10x, past the file's 2.4 MB; allow noise, not growth
    assert peak_big < 1.5 * peak_small + 64 * 1024, (peak_small, peak_big)
    assert peak_big < 1024 * 1024

    for n, name in ((2_000, "c_small.json"), (20_000, "c_big.json")):
        with open(tmp_path / name, "w", encoding="utf-8") as f:
            f.write("{" + ",\n".join(json.dumps(f"id-{i}") + ": " + json.dumps({"title": f"product {i}", "image_local": f"images/{i}.png"})
                                     for i in range(n)) + "}")

    def drain_json(p):
        return lambda: sum(1 for _ in iter_json_members(str(p), chunk=1 << 14))

    peak_small = _peak_while(drain_json(tmp_path / "c_small.json"))
    peak_big = _peak_while(drain_json(tmp_path / "c_big.json"))
    assert os.path.getsize(tmp_path / "c_big.json") > 1_000_000
    assert peak_big < 1.5 * peak_small + 64 * 1024, (peak_small, peak_big)
    assert peak_big < 512 * 1024
