"""Reading a version with its media: Hugging Face Image() columns, Parquet inline or by reference,
the PyTorch iterable, COCO and YOLO through label-studio-sdk's converter; an older tag reads the
bytes it referenced after the file changed in Label Studio."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest

from ls_space_sync.media.read import NoMedia
from ls_space_sync.read import api
from tests.unit.test_media import CDN, URL, env, png, syncer_for  # noqa: F401 - env is a fixture

BOX_CONFIG = ('<View><Image name="img" value="$image"/>'
              '<RectangleLabels name="box" toName="img"><Label value="cat"/><Label value="dog"/></RectangleLabels></View>')


def box(label: str) -> list[dict]:
    return [{"id": "r1", "from_name": "box", "to_name": "img", "type": "rectanglelabels", "original_width": 20,
             "original_height": 10, "image_rotation": 0,
             "value": {"x": 10, "y": 20, "width": 50, "height": 40, "rotation": 0, "rectanglelabels": [label]}}]


@pytest.fixture
def synced(tmp_path, env):  # noqa: F811 - the fixture imported above
    fake, files = env
    pid = fake.project("boxes", BOX_CONFIG)
    files.files[f"{CDN}/a.png"] = png("red", (20, 10))
    files.files[f"{CDN}/b.png"] = png("blue", (20, 10))
    a = fake.import_task(pid, {"data": {"image": f"{CDN}/a.png"}, "annotations": [{"result": box("cat")}]})
    fake.import_task(pid, {"data": {"image": f"{CDN}/b.png"}, "annotations": [{"result": box("dog")}]})
    syncer = syncer_for(tmp_path)
    syncer.run_once(pid)
    files.files[f"{CDN}/a.png"] = png("green", (20, 10))  # changed in Label Studio after run 1
    fake.touch(a["id"], image=f"{CDN}/a.png")
    fake.tick(60)
    syncer.run_once(pid)
    return pid, syncer.settings


def test_hf_export_of_an_older_tag_has_its_images(synced, tmp_path):
    import datasets

    pid, settings = synced
    rows = api.export_version(pid, tmp_path / "hf", "hf", tag="run-000001", settings=settings)
    assert rows == 2
    loaded = datasets.load_from_disk(str(tmp_path / "hf"))
    assert isinstance(loaded.features["image"], datasets.Image)
    first = min(loaded, key=lambda r: r["id"])
    assert first["image"].size == (20, 10) and first["image"].getpixel((0, 0)) == (255, 0, 0)  # red, not green
    api.export_version(pid, tmp_path / "hf2", "hf", settings=settings)
    latest = min(datasets.load_from_disk(str(tmp_path / "hf2")), key=lambda r: r["id"])
    assert latest["image"].getpixel((0, 0)) == (0, 128, 0)


def test_parquet_inline_or_by_reference(synced, tmp_path):
    pid, settings = synced
    api.export_version(pid, tmp_path / "inline.parquet", "parquet", tag="run-000001", settings=settings,
                       media="inline")
    table = pq.read_table(tmp_path / "inline.parquet").sort_by("id")
    assert table.column("image_bytes").to_pylist()[0] == png("red", (20, 10))
    assert table.column("image_mime").to_pylist() == ["image/png", "image/png"]
    api.export_version(pid, tmp_path / "ref.parquet", "parquet", tag="run-000001", settings=settings, media="ref")
    ref = pq.read_table(tmp_path / "ref.parquet")
    assert "image_bytes" not in ref.column_names and ref.column("image_sha256").null_count == 0
    api.export_version(pid, tmp_path / "none.parquet", "parquet", settings=settings, media="none")
    assert "image_sha256" not in pq.read_table(tmp_path / "none.parquet").column_names


def test_torch_iterable_yields_tasks_with_pil_images(synced):
    pid, settings = synced
    items = sorted(api.torch_iterable(pid, tag="run-000001", settings=settings, media=True), key=lambda x: x[0]["id"])
    task, image = items[0]
    assert task["annotations"][0]["result"][0]["value"]["rectanglelabels"] == ["cat"]
    assert image.getpixel((0, 0)) == (255, 0, 0)
    raw = next(iter(api.torch_iterable(pid, settings=settings, media=True, decode=False)))[1]
    assert isinstance(raw, bytes) and raw.startswith(b"\x89PNG")


def test_coco_and_yolo_write_images_and_labels(synced, tmp_path):
    pid, settings = synced
    assert api.export_version(pid, tmp_path / "coco", "coco", tag="run-000001", settings=settings) == 2
    coco = json.loads((tmp_path / "coco" / "result.json").read_text())
    assert len(coco["images"]) == 2 and len(coco["annotations"]) == 2
    assert {c["name"] for c in coco["categories"]} >= {"cat", "dog"}
    assert all((tmp_path / "coco" / im["file_name"]).exists() for im in coco["images"])
    assert coco["annotations"][0]["bbox"] == pytest.approx([2.0, 2.0, 10.0, 4.0])
    assert api.export_version(pid, tmp_path / "yolo", "yolo", settings=settings) == 2
    labels = sorted((tmp_path / "yolo" / "labels").glob("*.txt"))
    images = sorted((tmp_path / "yolo" / "images").glob("*.png"))
    assert [p.stem for p in labels] == [p.stem for p in images] and len(labels) == 2
    assert labels[0].read_text().split()[1:] == ["0.35", "0.4", "0.5", "0.4"]


def test_coco_without_stored_media_names_the_fix(tmp_path, env):  # noqa: F811
    fake, _ = env
    pid = fake.project("boxes", BOX_CONFIG)
    fake.import_task(pid, {"data": {"image": f"{CDN}/a.png"}})
    syncer = syncer_for(tmp_path, enabled=False)
    syncer.run_once(pid)
    with pytest.raises(NoMedia, match="media.enabled"):
        api.export_version(pid, tmp_path / "coco", "coco", settings=syncer.settings)
