"""Import from folders, ImageFolder trees and zips (with every zip attack as its own test); export round trip."""

import io
import stat
import struct
import zipfile

import pytest

import fsl_app.images as image_io
from fsl_app.store import ArchiveError, StoreError, create_project
from fsl_app.store import importing
from fsl_app.store.importing import RejectedFile, _DecompressionBudget, _read_zip_entry

try:
    from tests.conftest_store import (camera, digit_files, digit_png, encode, home, make_zip,  # noqa: F401
                                      project, write_imagefolder)
except ModuleNotFoundError:
    from conftest_store import (camera, digit_files, digit_png, encode, home, make_zip,  # noqa: F401
                                project, write_imagefolder)


def labels_by_name(project):
    return {image.source_name: image.label for image in project.images()}


# -- folders ---------------------------------------------------------------------------------------------------------

def test_import_imagefolder_subfolders_are_classes_loose_files_unlabeled(project, tmp_path):
    root = write_imagefolder(tmp_path / "data", {"cat": digit_files(2), "dog": digit_files(1, start=2),
                                                 None: digit_files(1, start=3)})
    (root / "dog" / "deeper").mkdir()
    (root / "dog" / "deeper" / "x.png").write_bytes(digit_png(4))
    report = project.import_imagefolder(root)
    assert len(report.added) == 5 and not report.rejected
    assert labels_by_name(project) == {"cat/digit_0000.png": "cat", "cat/digit_0001.png": "cat",
                                       "dog/digit_0002.png": "dog", "dog/deeper/x.png": "dog",
                                       "digit_0003.png": None}


def test_import_folder_skips_hidden_and_system_files(project, tmp_path):
    root = write_imagefolder(tmp_path / "data", {None: digit_files(1)})
    (root / ".DS_Store").write_bytes(b"\0\0")
    (root / "Thumbs.db").write_bytes(b"\0")
    (root / ".hidden").mkdir()
    (root / ".hidden" / "secret.png").write_bytes(digit_png(9))
    report = project.import_folder(root)
    assert len(report.added) == 1 and report.rejected == [] and report.duplicates == []


def test_import_folder_with_label_labels_everything(project, tmp_path):
    root = write_imagefolder(tmp_path / "data", {"sub": digit_files(2), None: digit_files(1, start=2)})
    project.import_folder(root, label="seven")
    assert project.class_counts() == {"seven": 3}


def test_import_folder_reports_non_images(project, tmp_path):
    root = write_imagefolder(tmp_path / "data", {"cat": [("readme.txt", b"hello"), ("fake.png", b"nope")]})
    report = project.import_imagefolder(root)
    assert sorted(name for name, _ in report.rejected) == ["cat/fake.png", "cat/readme.txt"]
    assert project.classes() == []  # no class is created for rejected files


def test_import_folder_follows_symlinked_folders_without_looping(project, tmp_path):
    outside = write_imagefolder(tmp_path / "outside", {None: digit_files(1, start=50)})
    root = write_imagefolder(tmp_path / "data", {"cat": digit_files(1)})
    (root / "dog").symlink_to(outside, target_is_directory=True)  # like ImageSet.from_folder
    (root / "cat" / "loop").symlink_to(root, target_is_directory=True)
    report = project.import_imagefolder(root)
    assert sorted((a.name, a.label) for a in report.added) == [("cat/digit_0000.png", "cat"),
                                                               ("dog/digit_0050.png", "dog")]


def test_import_missing_folder_is_a_clear_error(project, tmp_path):
    with pytest.raises(StoreError, match="is not a folder"):
        project.import_folder(tmp_path / "nope")


def test_import_with_invalid_label_is_refused_up_front(project):
    with pytest.raises(StoreError, match="contains '/'"):
        project.import_files(digit_files(1), label="a/b")


def test_invalid_folder_name_rejects_its_files_only(project, tmp_path):
    root = write_imagefolder(tmp_path / "data", {"x" * 101: digit_files(1), "ok": digit_files(1, start=1)})
    report = project.import_imagefolder(root)
    assert len(report.added) == 1 and "cannot be a class name" in report.rejected[0][1]


def test_progress_callback_counts_files(project):
    seen = []
    project.import_files(digit_files(3), on_progress=seen.append)
    assert seen == [1, 2, 3]


# -- zips: layouts ---------------------------------------------------------------------------------------------------

def test_zip_imagefolder_layout(project):
    data = make_zip([("cat/a.png", digit_png(0)), ("dog/b.png", digit_png(1)), ("loose.png", digit_png(2))])
    report = project.import_zip(data)
    assert len(report.added) == 3
    assert labels_by_name(project) == {"cat/a.png": "cat", "dog/b.png": "dog", "loose.png": None}


def test_zip_under_single_top_folder(project):
    data = make_zip([("photos/cat/a.png", digit_png(0)), ("photos/dog/b.png", digit_png(1)),
                     ("photos/c.png", digit_png(2))])
    project.import_zip(data)
    assert labels_by_name(project) == {"photos/cat/a.png": "cat", "photos/dog/b.png": "dog", "photos/c.png": None}


def test_zip_with_one_folder_of_files_uses_it_as_class(project):
    project.import_zip(make_zip([("cats/a.png", digit_png(0)), ("cats/b.png", digit_png(1))]))
    assert project.class_counts() == {"cats": 2}


def test_zip_with_label_or_flat(project):
    data = make_zip([("cat/a.png", digit_png(0)), ("dog/b.png", digit_png(1))])
    project.import_zip(data, label="animal")
    assert project.class_counts() == {"animal": 2}
    other = create_project("flat", home=project.home)
    other.import_zip(data, folders_as_classes=False)
    assert other.classes() == [] and len(other.images()) == 2


def test_zip_from_path_and_file_object(project, tmp_path):
    path = tmp_path / "upload.zip"
    path.write_bytes(make_zip([("a.png", digit_png(0))]))
    assert len(project.import_zip(path).added) == 1
    with open(path, "rb") as handle:
        assert len(project.import_zip(handle).duplicates) == 1


def test_zip_unicode_names_and_macos_junk(project):
    data = make_zip([("猫/a.png", digit_png(0)), ("__MACOSX/猫/._a.png", b"junk"), ("猫/.DS_Store", b"junk")])
    report = project.import_zip(data)
    assert len(report.added) == 1 and report.rejected == []
    assert project.classes() == ["猫"]


def test_not_a_zip_is_refused_as_a_whole(project):
    with pytest.raises(ArchiveError, match="not a readable zip"):
        project.import_zip(b"PK but not really a zip")


# -- browser uploads: images and zips mixed --------------------------------------------------------------------------

class Upload:
    """What Streamlit's file_uploader hands over: a name and getvalue()."""

    def __init__(self, name: str, data: bytes):
        self.name, self._data = name, data

    def getvalue(self) -> bytes:
        return self._data


def test_uploads_of_images_and_zips_give_one_report(project):
    archive = make_zip([("cat/a.png", digit_png(1)), ("dog/b.png", digit_png(2)), ("notes.txt", b"hi")])
    uploads = [Upload("x.png", digit_png(3)), Upload("photos.zip", archive), Upload("copy.png", digit_png(3)),
               Upload("broken.zip", b"PK but not really a zip"), ("pair.png", digit_png(4))]
    report = project.import_uploads(uploads)
    assert sorted(image.name for image in report.added) == ["cat/a.png", "dog/b.png", "pair.png", "x.png"]
    assert [(item.name, item.existing_label) for item in report.duplicates] == [("copy.png", None)]
    assert {name for name, _ in report.rejected} == {"notes.txt", "broken.zip"}
    assert "not a readable zip" in dict(report.rejected)["broken.zip"]
    assert labels_by_name(project) == {"x.png": None, "pair.png": None, "cat/a.png": "cat", "dog/b.png": "dog"}


def test_uploads_into_a_class_label_zips_too_and_a_bad_label_rejects_instead_of_raising(project):
    archive = make_zip([("x/c.png", digit_png(2))])
    report = project.import_uploads([Upload("a.png", digit_png(1)), Upload("b.zip", archive)], "cat")
    assert len(report.added) == 2 and set(labels_by_name(project).values()) == {"cat"}
    bad = project.import_uploads([Upload("d.png", digit_png(3))], "   ")
    assert [name for name, _ in bad.rejected] == ["d.png"] and not bad.added


def test_missing_zip_path_is_a_clear_error(project, tmp_path):
    with pytest.raises(StoreError, match="does not exist"):
        project.import_zip(tmp_path / "missing.zip")


# -- zips: attacks, one test each ------------------------------------------------------------------------------------

def test_zip_slip_dot_dot_is_rejected(project):
    report = project.import_zip(make_zip([("../evil.png", digit_png(0)), ("ok/a.png", digit_png(1))]))
    assert report.rejected == [("../evil.png", report.rejected[0][1])] and "'..'" in report.rejected[0][1]
    assert len(report.added) == 1


def test_zip_slip_nested_dot_dot_is_rejected(project):
    report = project.import_zip(make_zip([("cat/../../evil.png", digit_png(0))]))
    assert report.added == [] and "'..'" in report.rejected[0][1]


def test_zip_slip_backslash_dot_dot_is_rejected(project):
    report = project.import_zip(make_zip([("..\\evil.png", digit_png(0))]))
    assert report.added == [] and "'..'" in report.rejected[0][1]


def test_zip_absolute_path_is_rejected(project):
    report = project.import_zip(make_zip([("/etc/evil.png", digit_png(0))]))
    assert report.added == [] and "absolute path" in report.rejected[0][1]


def test_zip_windows_drive_path_is_rejected(project):
    report = project.import_zip(make_zip([("C:/Windows/evil.png", digit_png(0))]))
    assert report.added == [] and "absolute path" in report.rejected[0][1]


def test_zip_symlink_entry_is_rejected(project):
    link = zipfile.ZipInfo("cat/link.png")
    link.create_system = 3
    link.external_attr = (stat.S_IFLNK | 0o777) << 16
    report = project.import_zip(make_zip([(link, b"/etc/passwd"), ("cat/a.png", digit_png(0))]))
    assert [name for name, _ in report.rejected] == ["cat/link.png"]
    assert "symbolic link" in report.rejected[0][1] and len(report.added) == 1


def test_zip_encrypted_entry_is_rejected(project):
    data = _set_flag_bits(make_zip([("secret.png", digit_png(0))]), 0x1)
    report = project.import_zip(data)
    assert report.added == [] and "password-protected" in report.rejected[0][1]


def test_zip_with_too_many_entries_is_refused(project, monkeypatch):
    monkeypatch.setattr(importing, "MAX_ZIP_ENTRIES", 5)
    with pytest.raises(ArchiveError, match="6 entries; the limit is 5"):
        project.import_zip(make_zip(digit_files(6)))
    assert project.images() == []


def test_zip_bomb_entry_is_rejected_by_declared_size(project):
    """A real 120 MiB-of-zeros entry (~120 KiB compressed): refused from its header, never decompressed."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        with archive.open("bomb.png", "w") as entry:
            for _ in range(120):
                entry.write(bytes(1 << 20))
        archive.writestr("ok.png", digit_png(0))
    assert len(buffer.getvalue()) < 2 << 20
    report = project.import_zip(buffer.getvalue())
    assert [a.name for a in report.added] == ["ok.png"]
    assert report.rejected[0][0] == "bomb.png" and "per-file limit" in report.rejected[0][1]


def test_zip_bomb_archive_total_is_refused(project, monkeypatch):
    monkeypatch.setattr(importing, "MAX_ZIP_TOTAL_BYTES", 1000)
    with pytest.raises(ArchiveError, match="declares .* once decompressed"):
        project.import_zip(make_zip(digit_files(20)))


def test_zip_entry_lying_about_its_size_is_rejected(project):
    data = _set_declared_size(make_zip([("liar.png", digit_png(0))]), 10)
    report = project.import_zip(data)
    assert report.added == [] and "cannot be extracted" in report.rejected[0][1]


def test_streaming_cap_stops_decompression_beyond_budget():
    archive = zipfile.ZipFile(io.BytesIO(make_zip([("big.png", bytes(50_000))])))
    with pytest.raises(RejectedFile, match="possible zip bomb"):
        _read_zip_entry(archive, archive.infolist()[0], _DecompressionBudget(remaining=10_000))


def test_zip_entry_over_size_limit_is_rejected(project, monkeypatch):
    monkeypatch.setattr(image_io, "MAX_BYTES", 100)
    report = project.import_zip(make_zip([("a.png", digit_png(0))]))
    assert report.added == [] and "per-file limit" in report.rejected[0][1]


def test_zip_truncated_jpeg_and_fake_image_are_rejected(project):
    jpeg = encode(camera(), "JPEG")
    report = project.import_zip(make_zip([("cut.jpg", jpeg[:len(jpeg) // 3]), ("fake.png", b"plain text")]))
    reasons = dict(report.rejected)
    assert report.added == [] and "truncated" in reasons["cut.jpg"] and "not an image" in reasons["fake.png"]


def _set_flag_bits(data: bytes, bits: int) -> bytes:
    """Set general-purpose flag bits in every local and central header (the writer clears them)."""
    out = bytearray(data)
    for signature, offset in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):
        start = out.find(signature)
        while start != -1:
            flags = struct.unpack_from("<H", out, start + offset)[0]
            struct.pack_into("<H", out, start + offset, flags | bits)
            start = out.find(signature, start + 4)
    return bytes(out)


def _set_declared_size(data: bytes, size: int) -> bytes:
    """Make the central directory claim a smaller uncompressed size than the entry really has."""
    out = bytearray(data)
    start = out.find(b"PK\x01\x02")
    struct.pack_into("<I", out, start + 24, size)
    return bytes(out)


# -- export ----------------------------------------------------------------------------------------------------------

def test_export_round_trip_keeps_bytes_and_labels(project, tmp_path):
    project.import_files(digit_files(3), label="zero")
    project.import_files(digit_files(2, start=3), label="one")
    project.import_files(digit_files(1, start=9))  # unlabeled: not exported
    target = tmp_path / "out" / "export.zip"
    report = project.export_imagefolder_zip(target)
    assert report.n_images == 5 and report.folders == {"one": "one", "zero": "zero"}
    assert not [p for p in target.parent.iterdir() if p.name.startswith(".tmp")]
    copy = create_project("copy", home=project.home)
    copy.import_zip(target)
    original = {(i.sha256, i.label) for i in project.images(labeled=True)}
    assert {(i.sha256, i.label) for i in copy.images()} == original


def test_export_class_folders_are_filesystem_safe(project):
    project.import_files(digit_files(1), label="a:b?")
    project.import_files(digit_files(1, start=1), label="CON")
    buffer = io.BytesIO()
    report = project.export_imagefolder_zip(buffer)
    names = zipfile.ZipFile(io.BytesIO(buffer.getvalue())).namelist()
    assert sorted(name.split("/")[0] for name in names) == ["_CON", "a_b_"]
    assert report.folders == {"a:b?": "a_b_", "CON": "_CON"}


def test_export_same_file_names_do_not_collide(project):
    project.import_files([("same.png", digit_png(0))], label="x")
    project.import_files([("same.png", digit_png(1))], label="x")
    buffer = io.BytesIO()
    assert project.export_imagefolder_zip(buffer).n_images == 2
    assert len(set(zipfile.ZipFile(io.BytesIO(buffer.getvalue())).namelist())) == 2
