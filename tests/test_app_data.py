"""Data page (AppTest): the bundled sample, zip and folder uploads, a server path, bad and oversized input."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

from fixtures_runs import open_page, write_image_classes
from PIL import Image

from ui import page, workspace


def metrics(at) -> dict[str, str]:
    return {m.label: m.value for m in at.metric}


def png_bytes(colour: tuple[int, int, int] = (200, 10, 10)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (10, 10), colour).save(buf, format="PNG")
    return buf.getvalue()


def zip_of(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name, data in members.items():
            z.writestr(name, data)
    return buf.getvalue()


def test_bundled_sample_is_the_default_with_10_classes_and_1797_images(app_workspace, fake_jobs):
    assert (workspace.SAMPLE_DATA / "truth.csv").is_file(), "sample_data/ is part of the repository"
    at = open_page("data")
    assert not at.exception
    assert at.radio(key="data_choice").value.startswith("Use the bundled sample (1,797 handwritten digits")
    assert metrics(at)["Images"] == "1,797"
    assert metrics(at)["Classes"] == "10"
    assert at.query_params["data"] == str(workspace.SAMPLE_DATA)
    assert any("truth.csv" in i.value for i in at.info)  # the truth file is mentioned
    assert len(at.image) == 10  # one row of example thumbnails per class
    assert any(link.proto.label.startswith("Next: train") for link in at.get("page_link"))


def test_zip_upload_is_extracted_inside_the_workspace(app_workspace, fake_jobs):
    members = {f"animals/{c}/{i}.png": png_bytes((40 * k, 9 * i, 90)) for k, c in enumerate(("cat", "dog", "fox"))
               for i in range(4)}
    members["animals/README.txt"] = b"not an image"
    members["../escape.png"] = png_bytes()  # must never land outside the upload folder
    at = open_page("data")
    at.radio(key="data_choice").set_value("Upload a .zip").run()
    at.file_uploader[0].set_value(("my data.zip", zip_of(members), "application/zip")).run()
    assert not at.exception
    assert [e.value for e in at.error] == []
    assert metrics(at)["Images"] == "12"
    assert metrics(at)["Classes"] == "3"
    chosen = Path(at.query_params["data"])
    assert workspace.is_inside(chosen, app_workspace / "uploads")
    assert chosen.name == "animals" and (chosen / "cat").is_dir()
    assert not (app_workspace / "escape.png").exists() and not (app_workspace / "uploads" / "escape.png").exists()
    assert len(at.image) == 3


def test_a_file_that_is_not_a_zip_gets_a_clear_message_and_leaves_nothing(app_workspace, fake_jobs):
    at = open_page("data")
    at.radio(key="data_choice").set_value("Upload a .zip").run()
    at.file_uploader[0].set_value(("broken.zip", b"this is not a zip archive", "application/zip")).run()
    assert not at.exception
    assert at.error and at.error[0].value.startswith("This zip file cannot be used:")
    assert list((app_workspace / "uploads").iterdir()) == []


def test_an_upload_over_the_size_limit_is_refused(app_workspace, fake_jobs, monkeypatch):
    monkeypatch.setattr(page, "upload_limit_mb", lambda: 1)  # server.maxUploadSize = 1
    big = zip_of({"a/1.png": png_bytes(), "b/1.png": png_bytes(), "a/pad.bin": bytes(2 * 1024 * 1024)})
    at = open_page("data")
    at.radio(key="data_choice").set_value("Upload a .zip").run()
    assert any("Up to 1 MB" in c.value for c in at.caption)
    at.file_uploader[0].set_value(("big.zip", big, "application/zip")).run()
    assert at.error and "over the 1 MB limit" in at.error[0].value
    assert not (app_workspace / "uploads").exists() or list((app_workspace / "uploads").iterdir()) == []


def test_folder_upload_rebuilds_safe_relative_paths(app_workspace, fake_jobs):
    files = [(f"photos/{c}/img{i}.png", png_bytes((30 * k, 20 * i, 5)), "image/png")
             for k, c in enumerate(("ant", "bee")) for i in range(3)]
    files.append(("photos/../../outside.png", png_bytes(), "image/png"))  # sanitised, stays inside
    files.append(("photos/notes.txt", b"text", "text/plain"))
    at = open_page("data")
    at.radio(key="data_choice").set_value("Upload a folder").run()
    assert at.file_uploader[0].accept_directory
    at.file_uploader[0].set_value(files).run()
    assert not at.exception
    assert metrics(at)["Classes"] == "2"
    assert metrics(at)["Images"] == "6"
    chosen = Path(at.query_params["data"])
    assert chosen.name == "photos" and workspace.is_inside(chosen, app_workspace / "uploads")
    assert not (app_workspace.parent / "outside.png").exists()
    assert [w.value for w in at.warning] == ["Left out 1 file that is not an image."]
    assert all(workspace.is_inside(p, app_workspace / "uploads") for p in (app_workspace / "uploads").rglob("*"))


def test_folder_upload_keeps_classes_named_in_any_script_apart(app_workspace, fake_jobs):
    files = [(f"数据/{c}/{c}{i}.png", png_bytes((60 * k, 40 * i, 9)), "image/png")
             for k, c in enumerate(("猫", "犬", "café", "cafè")) for i in range(2)]
    at = open_page("data")
    at.radio(key="data_choice").set_value("Upload a folder").run()
    at.file_uploader[0].set_value(files).run()
    assert not at.exception
    assert [e.value for e in at.error] == []
    assert (metrics(at)["Classes"], metrics(at)["Images"]) == ("4", "8")
    chosen = Path(at.query_params["data"])
    assert chosen.name == "数据"
    assert sorted(p.name for p in chosen.iterdir()) == sorted(["猫", "犬", "café", "cafè"])


def test_folder_upload_with_two_names_for_one_file_is_refused_by_name(app_workspace, fake_jobs):
    files = [("pics/a/x:1.png", png_bytes((1, 2, 3)), "image/png"), ("pics/a/x?1.png", png_bytes(), "image/png"),
             ("pics/b/y.png", png_bytes(), "image/png")]
    at = open_page("data")
    at.radio(key="data_choice").set_value("Upload a folder").run()
    at.file_uploader[0].set_value(files).run()
    assert not at.exception
    assert [e.value for e in at.error] == [
        "This folder cannot be used: 'pics/a/x?1.png' and 'pics/a/x:1.png' would both be saved as 'pics/a/x_1.png': "
        "rename one of them and upload the folder again"]
    assert list((app_workspace / "uploads").iterdir()) == []  # nothing half-saved is kept


def test_a_path_on_the_server(app_workspace, fake_jobs, tmp_path):
    data = write_image_classes(tmp_path / "served", ("a", "b", "c"), per_class=5)
    (data / "a" / "broken.png").write_bytes(b"\x89PNG broken")
    at = open_page("data")
    at.radio(key="data_choice").set_value("A folder or .zip on this server").run()
    at.text_input[0].input(str(data))
    next(b for b in at.button if b.label == "Use this dataset").click().run()
    assert not at.exception
    assert metrics(at)["Images"] == "15"
    assert metrics(at)["Skipped files"] == "1"
    skipped = at.dataframe[0].value
    assert skipped["file"].tolist() == ["a/broken.png"]
    assert skipped["reason"].iloc[0]  # a reason a person can read


def test_a_missing_path_says_so(app_workspace, fake_jobs, tmp_path):
    at = open_page("data")
    at.radio(key="data_choice").set_value("A folder or .zip on this server").run()
    at.text_input[0].input(str(tmp_path / "nope"))
    next(b for b in at.button if b.label == "Use this dataset").click().run()
    assert at.error and "does not exist" in at.error[0].value


def test_a_folder_without_class_folders_is_explained(app_workspace, fake_jobs, tmp_path):
    flat = tmp_path / "flat"
    flat.mkdir()
    for i in range(3):
        Image.new("RGB", (8, 8)).save(flat / f"{i}.png")
    at = open_page("data", data=flat)
    assert at.error and "no class folders" in at.error[0].value


def test_a_txt_file_is_refused_with_the_reason_on_the_page(app_workspace, fake_jobs):
    at = open_page("data")
    at.radio(key="data_choice").set_value("Upload a .zip").run()
    # no type filter in the browser: it would refuse the file with the reason only in a hover tooltip
    assert list(at.file_uploader[0].proto.type) == []
    at.file_uploader[0].set_value(("notes.txt", b"just some text", "text/plain")).run()
    assert not at.exception
    assert [e.value for e in at.error] == ["This zip file cannot be used: 'notes.txt' is not a .zip file: upload a "
                                           ".zip of one folder per class"]
    assert list((app_workspace / "uploads").iterdir()) == []
