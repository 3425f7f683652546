"""Content fingerprints: they follow the bytes that are computed with, not names or records."""

from __future__ import annotations

from brainrecon.fingerprint import path_fingerprint


def _folder(root, weights: bytes, record: str):
    (root / "unet").mkdir(parents=True)
    (root / "unet" / "w.safetensors").write_bytes(weights)
    (root / "m.training.json").write_text(record)
    return root


def test_folder_fingerprint_follows_every_file_unless_ignored(tmp_path):
    a = _folder(tmp_path / "a", b"\x00\x01", '{"run": 1}')
    b = _folder(tmp_path / "b", b"\x00\x01", '{"run": 2}')  # same weights, another record
    c = _folder(tmp_path / "c", b"\x00\x02", '{"run": 1}')  # other weights, same record
    assert path_fingerprint(a) != path_fingerprint(b)
    ignore = ("*.training.json",)
    assert path_fingerprint(a, ignore=ignore) == path_fingerprint(b, ignore=ignore)
    assert path_fingerprint(a, ignore=ignore) != path_fingerprint(c, ignore=ignore)
    # a file is fingerprinted as given, whatever its name
    assert path_fingerprint(a / "m.training.json", ignore=ignore) != path_fingerprint(b / "m.training.json")
    assert path_fingerprint(tmp_path / "absent", ignore=ignore) == "missing"
