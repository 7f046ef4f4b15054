import io

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from scoremix_ray.config import DataConfig
from scoremix_ray.core.data import load_labelled, make_split
from scoremix_ray.core.data.images import from_model, to_model
from scoremix_ray.core.data.readers import scan_recordio
from scoremix_ray.core.data.recordio import pack, read_bin, write_bin, write_indexed
from scoremix_ray.foundations.errors import ScoreMixError


def _png(value: int, size=10, mode="L") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, (size, size), value if mode == "L" else (value, 0, 0)).save(buf, format="PNG")
    return buf.getvalue()


def _jpg(value: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (12, 12), (value, value, value)).save(buf, format="JPEG")
    return buf.getvalue()


def test_digits_embedded():
    d = load_labelled("digits", None, 16, 1)
    assert d.images.shape == (1797, 16, 16, 1) and d.images.dtype == np.uint8
    assert d.num_classes == 10 and d.counts().min() >= 170
    assert d.images.max() > 200  # scaled from 0..16 to 0..255


def test_model_roundtrip_is_exact():
    imgs = np.random.default_rng(0).integers(0, 256, (3, 8, 8, 1), dtype=np.uint8)
    assert np.array_equal(from_model(to_model(imgs)), imgs)


def test_folder_reader(tmp_path):
    for c, v in [("alice", 10), ("bob", 200)]:
        (tmp_path / c).mkdir()
        for i in range(3):
            (tmp_path / c / f"{i}.png").write_bytes(_png(v + i, mode="RGB"))
    (tmp_path / "bob" / "notes.txt").write_text("ignored")
    d = load_labelled("folder", tmp_path, 8, 3)
    assert d.class_names == ["alice", "bob"] and d.images.shape == (6, 8, 8, 3)
    assert list(d.labels) == [0, 0, 0, 1, 1, 1]
    assert d.images[3, 0, 0, 0] == 200


def test_folder_errors(tmp_path):
    with pytest.raises(ScoreMixError, match="image folder not found"):
        load_labelled("folder", tmp_path / "nope", 8, 1)
    with pytest.raises(ScoreMixError, match="no class sub-folders"):
        load_labelled("folder", tmp_path, 8, 1)
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x.png").write_bytes(_png(1))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ScoreMixError, match=r"class folder .*empty holds no images"):
        load_labelled("folder", tmp_path, 8, 1)
    (tmp_path / "empty" / "broken.png").write_bytes(b"\x89PNG not really")
    with pytest.raises(ScoreMixError, match=r"cannot decode image .*broken\.png"):
        load_labelled("folder", tmp_path, 8, 1)


def test_parquet_reader(tmp_path):
    table = pa.table({"image": [_png(5), _png(6), _jpg(100)], "label": [7, 7, 3]})
    pq.write_table(table, tmp_path / "part-0.parquet")
    pq.write_table(pa.table({"image": [{"bytes": _png(9), "path": None}], "label": [3]}), tmp_path / "part-1.parquet")
    d = load_labelled("parquet", tmp_path, 8, 1)
    assert d.class_names == ["3", "7"] and len(d.labels) == 4
    assert sorted(d.labels.tolist()) == [0, 0, 1, 1]


def test_parquet_errors(tmp_path):
    with pytest.raises(ScoreMixError, match="Parquet path not found"):
        load_labelled("parquet", tmp_path / "x.parquet", 8, 1)
    f = tmp_path / "bad.parquet"
    pq.write_table(pa.table({"img": [_png(1)], "label": [0]}), f)
    with pytest.raises(ScoreMixError, match=r"bad.parquet has no 'image' column \(columns: img, label\)"):
        load_labelled("parquet", f, 8, 1)
    f.write_bytes(b"not parquet")
    with pytest.raises(ScoreMixError, match="cannot read Parquet file"):
        load_labelled("parquet", f, 8, 1)
    pq.write_table(pa.table({"image": [b"garbage"], "label": [0]}), f)
    with pytest.raises(ScoreMixError, match=r"cannot decode image .*bad.parquet row 0"):
        load_labelled("parquet", f, 8, 1)


def _insightface_rec(tmp_path, labels):
    """A train.rec/.idx laid out as InsightFace ships it: header record 0, images 1..n, identity records."""
    n = len(labels)
    header = pack([n + 1, n + 1 + len(set(labels))], b"")
    payloads = [header] + [pack(float(lab), _jpg(40 * lab + 5), id_=i + 1) for i, lab in enumerate(labels)]
    payloads += [pack([1.0, 2.0], b"")] * len(set(labels))  # identity range records, not images
    write_indexed(tmp_path / "train.rec", payloads)
    return tmp_path / "train.rec"


def test_recordio_reader(tmp_path):
    rec = _insightface_rec(tmp_path, [0, 0, 1, 2, 2])
    assert scan_recordio(rec).labels.tolist() == [0, 0, 1, 2, 2]
    d = load_labelled("recordio", rec, 8, 1)
    assert d.images.shape == (5, 8, 8, 1) and d.num_classes == 3
    assert abs(int(d.images[2].mean()) - 45) <= 3  # label 1 was drawn at gray 45 (JPEG is lossy)


def test_recordio_without_header(tmp_path):
    write_indexed(tmp_path / "t.rec", [pack(1.0, _png(1)), pack(4.0, _png(2))])
    cat = scan_recordio(tmp_path / "t.rec")
    assert cat.class_names == ["1", "4"] and cat.labels.tolist() == [0, 1]


def test_recordio_errors(tmp_path):
    with pytest.raises(ScoreMixError, match="RecordIO file not found"):
        scan_recordio(tmp_path / "train.rec")
    rec = _insightface_rec(tmp_path, [0, 1])
    idx = rec.with_suffix(".idx")
    lines = idx.read_text().splitlines()
    idx.write_text("\n".join(lines[:1] + ["1\t3"] + lines[2:]) + "\n")  # offset 3 is inside record 0
    with pytest.raises(ScoreMixError, match=r"train.idx does not match .*train.rec: no record at offset 3"):
        scan_recordio(rec)
    idx.write_text("0\t99999\n")
    with pytest.raises(ScoreMixError, match="points past the end"):
        scan_recordio(rec)
    idx.write_text("zero 0\n")
    with pytest.raises(ScoreMixError, match="line 1 is not 'key<TAB>offset'"):
        scan_recordio(rec)


def test_verification_bin(tmp_path):
    images = [_png(i) for i in range(6)]
    write_bin(tmp_path / "lfw.bin", images, [True, False, True])
    bins, issame = read_bin(tmp_path / "lfw.bin")
    assert bins == images and issame.tolist() == [True, False, True]
    import pickle

    (tmp_path / "odd.bin").write_bytes(pickle.dumps((images[:5], [True, False, True])))
    with pytest.raises(ScoreMixError, match="5 images for 3 pairs"):
        read_bin(tmp_path / "odd.bin")
    (tmp_path / "junk.bin").write_bytes(b"junk")
    with pytest.raises(ScoreMixError, match="junk.bin is not an InsightFace .bin set"):
        read_bin(tmp_path / "junk.bin")


def test_open_set_split():
    d = load_labelled("digits", None, 16, 1)
    cfg = DataConfig(per_class=30, num_pairs=300, split_seed=1)
    s = make_split(d, cfg)
    assert s.train.num_classes == 5 and s.test.num_classes == 5
    assert not set(s.train.class_names) & set(s.test.class_names)  # unseen classes are truly unseen
    assert s.train.counts().tolist() == [30] * 5
    assert len(s.issame) == 300 and s.issame.sum() == 150
    a, b = s.pairs.T
    assert np.all(a != b)
    assert np.array_equal(s.test.labels[a] == s.test.labels[b], s.issame)
    s2 = make_split(d, cfg)
    assert np.array_equal(s.pairs, s2.pairs) and np.array_equal(s.train.images, s2.train.images)
    s3 = make_split(d, DataConfig(per_class=30, num_pairs=300, split_seed=2))
    assert s3.train.class_names != s.train.class_names or not np.array_equal(s3.pairs, s.pairs)


def test_closed_set_split():
    d = load_labelled("digits", None, 16, 1)
    s = make_split(d, DataConfig(protocol="closed-set", per_class=20, num_pairs=100))
    assert s.train.class_names == s.test.class_names and s.train.num_classes == 10
    # held-out images are not training images
    train = {im.tobytes() for im in s.train.images}
    assert sum(im.tobytes() in train for im in s.test.images) <= 2  # digits has a few exact duplicates


def test_split_errors():
    d = load_labelled("digits", None, 16, 1)
    with pytest.raises(ScoreMixError, match=r"class '\d' has \d+ training images, fewer than data.per_class=500"):
        make_split(d, DataConfig(per_class=500))
    with pytest.raises(ScoreMixError, match="both need >= 2"):
        make_split(d, DataConfig(unseen_fraction=0.05))


def test_split_roundtrip(tmp_path, digits_split):
    digits_split.save(tmp_path / "s.npz")
    from scoremix_ray.core.data import Split

    s = Split.load(tmp_path / "s.npz")
    assert np.array_equal(s.pairs, digits_split.pairs) and s.train.class_names == digits_split.train.class_names


def test_glyphs_source_many_classes_without_look_alikes():
    """The embedded many-class source: >= 100 characters x >= 20 images, built from matplotlib's fonts; Latin A
    and Greek Alpha (one outline in the fonts) are one class, Theta and O are two; the same pixels each build."""
    from scoremix_ray.core.data import glyphs
    from scoremix_ray.core.data.readers import scan

    cat = scan("glyphs", None)
    counts = np.bincount(cat.labels)
    assert len(cat.class_names) >= 100 and counts.min() >= 20 and cat.pixels.shape[1:] == (glyphs.RENDER,) * 2
    names = {n.split(" ", 1)[1] for n in cat.class_names}
    assert "LATIN CAPITAL LETTER A" in names and "GREEK CAPITAL LETTER ALPHA" not in names
    assert "GREEK CAPITAL LETTER THETA" in names and "CYRILLIC SMALL LETTER ZHE" in names
    pixels = cat.pixels.copy()
    glyphs.render.cache_clear()
    assert np.array_equal(glyphs.render()[0], pixels)
    cfg = DataConfig(source="glyphs")
    assert (cfg.image_size, cfg.channels) == (16, 1)
