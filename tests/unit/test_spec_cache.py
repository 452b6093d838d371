"""launch._SpecCache: a ForkServer reads a bundle's config.json again only when it changed."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from gofer9p import launch
from gofer9p.launch import LaunchError


def _bundle(tmp: Path, name: str = "b", ro: bool = False) -> str:
    b = tmp / name
    (b / "rootfs").mkdir(parents=True, exist_ok=True)
    (b / "config.json").write_text(json.dumps({"root": {"path": "rootfs", "readonly": ro}}))
    return str(b)


def _count_parses(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    seen: list[str] = []
    real = launch._parse_spec

    def counting(bundle: str | os.PathLike[str], doc: object) -> launch.Spec:
        seen.append(os.fspath(bundle))
        return real(bundle, None)

    monkeypatch.setattr(launch, "_parse_spec", counting)
    return seen


def test_an_unchanged_bundle_is_parsed_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen = _count_parses(monkeypatch)
    cache = launch._SpecCache()
    b = _bundle(tmp_path)
    first = cache.load(b)
    assert cache.load(b) is first
    assert seen == [b]
    assert first == launch.load_spec(b)


def test_a_rewritten_config_is_read_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen = _count_parses(monkeypatch)
    cache = launch._SpecCache()
    b = _bundle(tmp_path)
    assert not cache.load(b).root_readonly
    # a new file (another inode, size and ctime): what a manager writing the bundle does
    cfg = Path(b, "config.json")
    new = Path(b, "config.json.new")
    new.write_text(json.dumps({"root": {"path": "rootfs", "readonly": True}, "mounts": []}))
    os.replace(new, cfg)
    assert cache.load(b).root_readonly
    assert seen == [b, b]


def test_errors_are_not_kept(tmp_path: Path) -> None:
    cache = launch._SpecCache()
    b = tmp_path / "b"
    b.mkdir()
    with pytest.raises(LaunchError, match=r"no config\.json"):
        cache.load(str(b))
    assert cache.entries == {}
    (b / "config.json").write_text("{not json")
    with pytest.raises(LaunchError, match="not valid JSON"):
        cache.load(str(b))
    assert cache.entries == {}
    _bundle(tmp_path)
    assert cache.load(str(b)).root_path == str(b / "rootfs")


def test_the_least_recently_read_goes_first(tmp_path: Path) -> None:
    cache = launch._SpecCache()
    bundles = [_bundle(tmp_path, f"b{i}") for i in range(launch._SPEC_CACHE_SIZE + 1)]
    for b in bundles[:-1]:
        cache.load(b)
    cache.load(bundles[0])  # read again: now the most recent
    cache.load(bundles[-1])  # one too many: bundles[1] goes
    assert len(cache.entries) == launch._SPEC_CACHE_SIZE
    assert bundles[1] not in cache.entries
    assert bundles[0] in cache.entries and bundles[-1] in cache.entries
