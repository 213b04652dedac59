"""What an export says about itself, read and checked without unpickling anything or loading a model library.

Every export carries fsl_app's metadata (classes, preprocessing, threshold, head). Zip archives (bundles and
TorchScript) are checked member by member against their CRC-32 before they are used, so a copy damaged on a disk or
in a download is named as such. A bundle's ``config.json`` records the sha256 of its model files; a bundle without
those checksums, or whose files do not match them, is refused.
"""

from __future__ import annotations

import hashlib
import json
import re
import zipfile
import zlib
from pathlib import Path

from .formats import (CHECKSUMMED_FILES, EXPORT_FORMAT_VERSION, MARKER_KEY, PREPROCESSING_KEYS,
                      TORCHSCRIPT_EXTRA_FILE, ModelFileError)

_SHA256 = re.compile(r"[0-9a-f]{64}")


def check_export_info(info: dict | None, source: Path) -> dict:
    """Validate the metadata of an export (classes, preprocessing, threshold, head); raise :class:`ModelFileError`."""
    if not isinstance(info, dict) or MARKER_KEY not in info:
        raise ModelFileError(f"{source} was not exported by fsl-app (no fsl_app metadata found). Export a run with "
                             "`fsl-app export RUN_DIR --format onnx|torchscript|bundle`, or pass a run folder.")
    if not isinstance(info[MARKER_KEY], int) or info[MARKER_KEY] > EXPORT_FORMAT_VERSION:
        raise ModelFileError(f"{source} uses export format {info[MARKER_KEY]!r}, newer than this fsl_app "
                             f"understands ({EXPORT_FORMAT_VERSION}). Upgrade fsl_app.")
    classes = info.get("classes")
    if not isinstance(classes, list) or len(classes) < 2 or not all(isinstance(c, str) for c in classes):
        raise ModelFileError(f"{source}: the fsl_app metadata lists no valid class names. Re-export the run.")
    _check_preprocessing(info.get("preprocessing"), source)
    threshold = info.get("threshold")
    if threshold is not None and not (isinstance(threshold, (int, float)) and 0.0 <= threshold <= 1.0):
        raise ModelFileError(f"{source}: threshold {threshold!r} is not a probability in [0, 1]. Re-export the run.")
    return info


def _check_preprocessing(preprocessing, source: Path) -> None:
    required = ("input_size", "interpolation", "mean", "std")
    if not isinstance(preprocessing, dict) or any(key not in preprocessing for key in required):
        raise ModelFileError(f"{source}: the preprocessing metadata needs {', '.join(required)}. Re-export the run.")
    size = preprocessing["input_size"]
    if not (isinstance(size, list) and len(size) == 3 and all(isinstance(v, int) and v > 0 for v in size)):
        raise ModelFileError(f"{source}: input_size {size!r} is not [channels, height, width]. Re-export the run.")


def check_model_answers(source, logits_of_blank, input_size, n_classes: int) -> None:
    """One blank image of the metadata's ``input_size`` must give one logit per class the metadata names.

    ``logits_of_blank(shape)`` runs the model on zeros of ``shape`` (1, 3, H, W) in its own runtime (numpy or torch).
    """
    shape = (1, *input_size)
    try:
        logits = logits_of_blank(shape)
    except Exception as error:  # noqa: BLE001 - the runtimes raise many types for a model that does not fit
        raise ModelFileError(f"{source}: the model does not accept the input size in its metadata "
                             f"{tuple(shape)} ({first_line(error)}). The file was modified; re-export it with "
                             "`fsl-app export`.") from error
    if logits.ndim != 2 or logits.shape[1] != n_classes:
        raise ModelFileError(f"{source}: the model outputs {tuple(logits.shape)} for one image but its metadata names "
                             f"{n_classes} classes. The file was modified; re-export it with `fsl-app export`.")


def first_line(error: Exception) -> str:
    """The first line of an error message (runtimes raise long multi-line messages), at most 200 characters."""
    return (str(error).strip().splitlines() or [type(error).__name__])[0][:200]


# --- ONNX and TorchScript metadata ------------------------------------------------------------------------------------

def onnx_metadata(info: dict) -> dict[str, str]:
    """ONNX ``metadata_props``: every info key, preprocessing keys flattened, each value as JSON text."""
    flat = {key: value for key, value in info.items() if key != "preprocessing"}
    flat.update({key: info["preprocessing"].get(key) for key in PREPROCESSING_KEYS})
    return {key: json.dumps(value, ensure_ascii=False) for key, value in flat.items()}


def info_from_onnx_metadata(props: dict[str, str]) -> dict | None:
    """Inverse of :func:`onnx_metadata`; None when the properties are not fsl_app's."""
    if MARKER_KEY not in props:
        return None
    try:
        values = {key: json.loads(value) for key, value in props.items()}
    except json.JSONDecodeError:
        return None
    info = {key: value for key, value in values.items() if key not in PREPROCESSING_KEYS}
    info["preprocessing"] = {key: values[key] for key in PREPROCESSING_KEYS if key in values}
    return info


def read_torchscript_info(path: Path) -> dict | None:
    """The ``fsl_app.json`` extra file of a TorchScript archive, read with zipfile (nothing is unpickled)."""
    if not zipfile.is_zipfile(path):
        raise ModelFileError(f"{path} is not a TorchScript archive. Export one with `fsl-app export RUN_DIR "
                             "--format torchscript`.")
    check_archive_intact(path, "torchscript")
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
        extra = [n for n in names if n.count("/") == 2 and n.endswith(f"/extra/{TORCHSCRIPT_EXTRA_FILE}")]
        if not any("/code/" in n for n in names):
            raise ModelFileError(f"{path} is a pickled checkpoint, not TorchScript, and was not exported by fsl-app; "
                                 "fsl-app never unpickles such files. Export a run with `fsl-app export RUN_DIR "
                                 "--format torchscript`.")
        if len(extra) != 1:
            return None
        try:
            return json.loads(archive.read(extra[0]).decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            return None


# --- zip integrity ----------------------------------------------------------------------------------------------------

def check_archive_intact(path: Path, export_format: str) -> None:
    """Refuse a zip with a member that fails its CRC-32 or does not decompress: a damaged copy of an export.

    Reads every member once (CRC-32 runs at disk speed), before any member is trusted.
    """
    read_intact_members(path, (), export_format)


def read_intact_members(path: Path, names, export_format: str) -> dict[str, bytes]:
    """Read every member of the zip at ``path`` once (so each one's CRC-32 is checked, as
    :func:`check_archive_intact` does) and return those in ``names`` that it holds; ModelFileError if any fails."""
    wanted, kept, damaged = set(names), {}, ""
    try:
        with zipfile.ZipFile(path) as archive:
            for member in archive.infolist():
                damaged = member.filename
                data = archive.read(member)
                if member.filename in wanted:
                    kept[member.filename] = data
    except (zipfile.BadZipFile, zlib.error, EOFError) as error:
        raise _damaged_archive(path, damaged if "CRC" in str(error) else first_line(error), export_format) from None
    return kept


def _damaged_archive(path: Path, damaged: str, export_format: str) -> ModelFileError:
    return ModelFileError(f"{path} is damaged: {damaged} fails the zip's CRC-32 check, so the file changed after "
                          "it was written (a broken copy, disk or download). To get a good one, download it again "
                          "or copy it from the original, or re-export the run with `fsl-app export RUN_DIR "
                          f"--format {export_format}`.")


# --- bundle files and checksums ---------------------------------------------------------------------------------------

def read_bundle_bytes(bundle: Path, name: str) -> bytes:
    """One member of a bundle .zip, or one file of an unzipped bundle folder."""
    if bundle.is_dir():
        member = bundle / name
        if not member.is_file():
            raise ModelFileError(f"{bundle} lacks {name}: it is not a complete fsl-app bundle. Re-export it.")
        return member.read_bytes()
    if not zipfile.is_zipfile(bundle):
        raise _not_a_bundle_zip(bundle)
    with zipfile.ZipFile(bundle) as archive:
        try:
            return archive.read(name)
        except KeyError:
            raise ModelFileError(f"{bundle} lacks {name}: it was not exported by fsl-app or is incomplete. "
                                 "Re-export it with `fsl-app export RUN_DIR --format bundle`.") from None


def check_bundle_archive(bundle: Path) -> None:
    """A bundle .zip must be a zip file whose members all pass their CRC-32 check."""
    if not zipfile.is_zipfile(bundle):
        raise _not_a_bundle_zip(bundle)
    check_archive_intact(bundle, "bundle")


def _not_a_bundle_zip(bundle: Path) -> ModelFileError:
    return ModelFileError(f"{bundle} is not a readable zip file, so not a bundle written by `fsl-app export --format "
                          "bundle` (or a damaged copy of one: download it again or re-export it).")


def read_bundle_json(bundle: Path, name: str) -> dict | None:
    """A JSON member of a bundle; None when it is not UTF-8 JSON."""
    return parse_json_bytes(read_bundle_bytes(bundle, name))


def parse_json_bytes(data: bytes) -> dict | None:
    """UTF-8 JSON, or None when it is not."""
    try:
        return json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None


def read_bundle_members(bundle: Path, names) -> dict[str, bytes]:
    """The members ``names`` of a bundle .zip (every member read once: each CRC-32 checked) or bundle folder."""
    if bundle.is_dir():
        return {name: read_bundle_bytes(bundle, name) for name in names}
    if not zipfile.is_zipfile(bundle):
        raise _not_a_bundle_zip(bundle)
    members = read_intact_members(bundle, names, "bundle")
    for name in names:
        if name not in members:
            raise ModelFileError(f"{bundle} lacks {name}: it was not exported by fsl-app or is incomplete. "
                                 "Re-export it with `fsl-app export RUN_DIR --format bundle`.")
    return members


def recorded_checksums(bundle: Path, info: dict) -> dict[str, str]:
    """File name -> sha256 from ``config.json["files"]``; refused unless every model file has one."""
    files = info.get("files") if isinstance(info.get("files"), dict) else {}
    missing = [name for name in CHECKSUMMED_FILES if not _SHA256.fullmatch(str(files.get(name)))]
    if missing:
        raise ModelFileError(f"{bundle}: config.json records no checksums for {' and '.join(missing)}, so its "
                             "weights cannot be trusted (the bundle was edited). Re-export it with `fsl-app export "
                             "RUN_DIR --format bundle`.")
    return {name: files[name] for name in CHECKSUMMED_FILES}


def check_checksum(bundle: Path, name: str, data: bytes, checksums: dict[str, str]) -> None:
    """Refuse a model file whose sha256 differs from the one ``config.json`` records."""
    if hashlib.sha256(data).hexdigest() != checksums[name]:
        raise ModelFileError(f"{bundle}: {name} was modified after export (its sha256 differs from the one in "
                             "config.json). Re-export the bundle with `fsl-app export RUN_DIR --format bundle`.")
