"""manifest.json: the SHA-256 of every file a directory was written with, checked on load. Each
kind of damage is named with the file; a directory without a manifest, or with files added after
it, still loads."""

from __future__ import annotations

import json

from twotower.atomic import MANIFEST, drop_from_manifest, manifest_problem, write_manifest


def directory(tmp_path):
    (tmp_path / "a.bin").write_bytes(bytes(range(256)) * 10)
    (tmp_path / "b.json").write_text('{"x": 1}')
    (tmp_path / "weights").write_bytes(b"covered elsewhere")
    write_manifest(tmp_path, skip=("weights",))
    return tmp_path


def test_an_untouched_directory_passes_and_skipped_or_later_files_are_not_checked(tmp_path):
    d = directory(tmp_path)
    assert sorted(json.loads((d / MANIFEST).read_text())["sha256"]) == ["a.bin", "b.json"]
    (d / "weights").write_bytes(b"changed, but covered by another checksum")
    (d / "index.bin").write_bytes(b"added after the manifest")
    assert manifest_problem(d) is None


def test_one_flipped_bit_is_named(tmp_path):
    d = directory(tmp_path)
    data = bytearray((d / "a.bin").read_bytes())
    data[1234] ^= 0x10
    (d / "a.bin").write_bytes(bytes(data))
    assert manifest_problem(d).startswith("a.bin does not match its SHA-256 in manifest.json")


def test_a_missing_listed_file_and_an_unreadable_manifest_are_named(tmp_path):
    d = directory(tmp_path)
    (d / "b.json").unlink()
    assert manifest_problem(d) == "b.json is missing (listed in manifest.json)"
    (d / MANIFEST).write_text("{not json")
    assert manifest_problem(d) == "manifest.json is unreadable"


def test_no_manifest_means_nothing_to_check(tmp_path):
    (tmp_path / "a.bin").write_bytes(b"x")
    assert manifest_problem(tmp_path) is None


def test_files_dropped_from_the_manifest_may_then_go(tmp_path):
    d = directory(tmp_path)
    drop_from_manifest(d, ("a.bin",))
    (d / "a.bin").unlink()
    assert manifest_problem(d) is None
