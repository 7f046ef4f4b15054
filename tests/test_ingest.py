"""The data at scale: streamed data stage, image stores, and Ray Train ingestion through Ray Data."""

import tracemalloc

import numpy as np
import pytest
import torch
from PIL import Image

from scoremix_ray.config import DataConfig, RecognizerConfig
from scoremix_ray.core.data import Split, load_labelled, make_split, scan, write_split
from scoremix_ray.core.data.batches import InMemory, Streamed, read_rows, schedule
from scoremix_ray.core.data.store import ConcatStore, write_store

TINY_REC = RecognizerConfig(widths=(8, 16), blocks=(1, 1), embedding_dim=16, epochs=2, batch_size=32)


def _folder(root, classes=40, per_class=25, size=32):
    rng = np.random.default_rng(0)
    for c in range(classes):
        (root / f"id{c:03d}").mkdir(parents=True)
        for i in range(per_class):
            img = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)  # noise: PNG cannot shrink it
            Image.fromarray(img).save(root / f"id{c:03d}" / f"{i}.png")
    return root


def test_data_stage_streams_with_memory_of_a_batch(tmp_path):
    batch, row = 16, 32 * 32 * 3
    small = _folder(tmp_path / "small", classes=4, per_class=5)
    write_split(
        scan("folder", small),
        DataConfig(source="folder", path=small, num_pairs=20),
        32,
        3,
        tmp_path / "warm" / "split.npz",
        batch=batch,
    )  # first-call imports and caches
    root = _folder(tmp_path / "faces")
    cfg = DataConfig(source="folder", path=root, per_class=20, num_pairs=100)
    catalog = scan("folder", root)
    tracemalloc.start()
    split = write_split(catalog, cfg, 32, 3, tmp_path / "stage" / "split.npz", batch=batch)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    total = len(catalog) * row  # 3 MB decoded; a batch is 48 KB
    assert peak < 12 * batch * row < total / 5, f"peak {peak} B for {total} B of images"
    # the streamed split is the in-memory one, image for image
    ref = make_split(load_labelled("folder", root, 32, 3), cfg)
    loaded = Split.load(tmp_path / "stage" / "split.npz")
    for a, b in ((ref.train, loaded.train), (ref.test, loaded.test)):
        assert np.array_equal(np.asarray(b.images), a.images) and np.array_equal(b.labels, a.labels)
        assert a.class_names == b.class_names
    assert np.array_equal(loaded.pairs, ref.pairs) and split.summary() == ref.summary()


def test_store_indexes_like_an_array(tmp_path):
    images = np.random.default_rng(1).integers(0, 256, (50, 4, 4, 3), dtype=np.uint8)
    labels = np.arange(50) % 7
    store = write_store(tmp_path / "s", images, labels, [str(i) for i in range(7)])
    rows = np.array([49, 3, 3, 0, 17])
    assert np.array_equal(store[rows], images[rows]) and np.array_equal(store[5:9], images[5:9])
    assert np.array_equal(store[labels == 2], images[labels == 2]) and np.array_equal(store[-1], images[-1])
    assert store.shape == images.shape and np.array_equal(store.labels, labels)
    with pytest.raises(IndexError, match="row 50 out of range"):
        store[np.array([50])]
    both = ConcatStore([store, images[:10]])
    assert np.array_equal(both.take(np.array([52, 1, 49])), images[[2, 1, 49]])
    import pickle

    assert np.array_equal(pickle.loads(pickle.dumps(store))[rows], images[rows])  # what a Ray task receives


def test_schedules_shard_rows_across_ranks():
    rec = schedule("recognizer", TINY_REC, 200, seed=3, rank=0, world=2)
    other = schedule("recognizer", TINY_REC, 200, seed=3, rank=1, world=2)
    assert rec.per_rank == 16 and rec.steps_per_epoch == 6 and rec.total == 12
    epoch0 = np.concatenate([np.concatenate([rec.rows(s), other.rows(s)]) for s in range(6)])
    assert len(set(epoch0.tolist())) == len(epoch0) == 192  # disjoint slices of one permutation
    assert not np.array_equal(rec.rows(0), rec.rows(6))  # a new permutation each epoch
    gen = schedule("generator", TINY_REC.model_copy(update={"steps": 5}), 200, seed=3)
    assert gen.total == 5 and not np.array_equal(gen.rows(0), gen.rows(1))


def test_rank_datasets_give_each_worker_its_rows(tmp_path, ray_session):
    """Each rank's Ray Data stream holds exactly the rows its schedule names, in order, read from the stores
    (real then synthetic rows as one row space)."""
    from scoremix_ray.config import Config
    from scoremix_ray.runtime.train import rank_datasets

    rng = np.random.default_rng(2)
    real = write_store(tmp_path / "r", rng.integers(0, 256, (70, 8, 8, 1), dtype=np.uint8), np.arange(70) % 5, [])
    synth = write_store(tmp_path / "s", rng.integers(0, 256, (30, 8, 8, 1), dtype=np.uint8), 5 + np.arange(30) % 3, [])
    data, labels = ConcatStore([real, synth]), np.concatenate([real.labels, synth.labels])
    cfg = Config.model_validate({"recognizer": TINY_REC.model_dump(), "ray": {"num_workers": 2, "stream_block_mb": 1}})
    datasets = rank_datasets("recognizer", cfg, data, labels, tmp_path / "out")
    assert sorted(datasets) == ["rank0", "rank1"]
    for rank in (0, 1):
        sched = schedule("recognizer", TINY_REC, 100, cfg.seed, rank, 2)
        got = Streamed(datasets[f"rank{rank}"].iter_torch_batches(batch_size=16), 100, (8, 8, 1))
        batches = list(got.batches(sched, 0))  # raises if a batch holds other rows than the schedule's
        assert len(batches) == sched.total == 6
        want = read_rows(data, labels, sched, range(sched.total))
        assert np.array_equal(torch.cat([x for x, _ in batches]).numpy(), want["image"])
        assert np.array_equal(torch.cat([y for _, y in batches]).numpy(), want["label"])


def test_streamed_training_equals_cached(tmp_path, ray_session, digits_split):
    """A recognizer trained by Ray Train from a Ray Data stream (ray.cache_mb=0) ends with the very weights of the
    same run fed from memory, and of the same run inside an inline sweep trial: same rows, same order."""
    from scoremix_ray.config import Config
    from scoremix_ray.core.recognition.train import train_recognizer
    from scoremix_ray.runtime.context import RunContext
    from scoremix_ray.runtime.train import fit

    digits_split.save(tmp_path / "data" / "split.npz")
    synth = write_store(tmp_path / "synth", digits_split.train.images[:40], np.full(40, 5), [])
    cfg = Config.model_validate(
        {"recognizer": TINY_REC.model_dump(), "ray": {"cache_mb": 0, "cpus_per_worker": 1, "use_gpu": False}}
    )
    fit(
        RunContext(),
        cfg,
        "recognizer",
        tmp_path / "data" / "split.npz",
        tmp_path / "streamed",
        synthetic=tmp_path / "synth",
    )
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the worker's thread count: same kernels, same bits
    try:
        feed = InMemory(ConcatStore([digits_split.train.images, synth]), np.r_[digits_split.train.labels, synth.labels])
        train_recognizer(feed, 6, TINY_REC, cfg.seed, tmp_path / "cached")
    finally:
        torch.set_num_threads(threads)
    # as a sweep trial holding its CPUs: no TorchTrainer, the same loop in this process
    fit(
        RunContext(executor="process"),
        cfg.model_copy(update={"ray": cfg.ray.model_copy(update={"cache_mb": 1024})}),
        "recognizer",
        tmp_path / "data" / "split.npz",
        tmp_path / "inline",
        synthetic=tmp_path / "synth",
    )
    assert not (tmp_path / "inline" / "ray_train").exists()
    a = torch.load(tmp_path / "streamed" / "final" / "model.pt")
    for other in ("cached", "inline"):
        b = torch.load(tmp_path / other / "final" / "model.pt")
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), other


def test_image_size_and_channels_come_from_the_data(tmp_path, caplog):
    from scoremix_ray.pipeline import image_shape

    root = _folder(tmp_path / "rgb", classes=2, per_class=1, size=40)
    assert image_shape(DataConfig(source="folder", path=root), scan("folder", root)) == (40, 3)
    with caplog.at_level("WARNING", logger="scoremix_ray"):
        set_small = DataConfig(source="folder", path=root, image_size=16, channels=1)
        assert image_shape(set_small, scan("folder", root)) == (16, 1)
    assert "images are 40x40 px, data.image_size=16 shrinks them 2.5x" in caplog.text
    (tmp_path / "grey" / "a").mkdir(parents=True)
    Image.new("L", (30, 20)).save(tmp_path / "grey" / "a" / "0.png")
    assert image_shape(DataConfig(source="folder", path=tmp_path / "grey"), scan("folder", tmp_path / "grey")) == (
        20,
        1,
    )
    assert image_shape(DataConfig(), scan("digits", None)) == (16, 1)


def test_an_undecodable_image_stops_the_data_stage_or_is_left_out(tmp_path, caplog):
    """data.on_bad_image: "error" (default) names the file in one line and leaves no split behind; "skip"
    leaves the bad images out (a class left with none goes too) and says how many and which."""
    import io
    import logging

    from scoremix_ray.config import load_config
    from scoremix_ray.core.data.images import BadImage
    from scoremix_ray.pipeline import data_stage

    root = _folder(tmp_path / "faces", classes=5, per_class=4, size=16)
    (root / "id001" / "2.png").write_bytes(b"not an image")
    buf = io.BytesIO()
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(buf, "JPEG")
    (root / "id002" / "9.jpg").write_bytes(
        buf.getvalue()[:200]
    )  # a truncated JPEG: the header reads, the pixels do not
    (root / "id004").mkdir(exist_ok=True)
    for f in (root / "id004").iterdir():
        f.write_bytes(b"\x89PNG broken")
    sets = [f"out_dir={tmp_path / 'out'}", "data.source=folder", f"data.path={root}", "data.num_pairs=20"]
    with pytest.raises(BadImage) as e:
        data_stage(load_config(None, sets))
    msg = str(e.value)
    assert "\n" not in msg and str(root / "id001" / "2.png") in msg and "data.on_bad_image=skip" in msg
    assert not list((tmp_path / "out").rglob("split.npz"))
    with caplog.at_level(logging.WARNING, logger="scoremix_ray"):
        split, _ = data_stage(load_config(None, [*sets, "data.on_bad_image=skip"]))
    assert len(split.train.labels) + len(split.test.labels) == 5 * 4 + 1 - 6  # id004 gone, one of id001 and of id002
    assert "id004" not in split.train.class_names + split.test.class_names
    warning = next(r.getMessage() for r in caplog.records if "left out" in r.getMessage())
    assert "left out 6 image(s)" in warning and "id002/9.jpg" in warning and "and 1 more" in warning
