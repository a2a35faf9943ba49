"""The parse cache: one changed domain file costs one parse, and cached results equal fresh ones."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

import reconciler.desired.build as desired_mod
from reconciler.parsecache import ParseCache, write_rows
from reconciler.source import open_snapshot
from reconciler.validate import validate_snapshot

ROOT = Path(__file__).resolve().parent.parent


def _repo(tmp_path: Path) -> Path:
    repo = tmp_path / "repo"
    shutil.copytree(ROOT / "example-repo", repo)
    git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@example.net"]
    subprocess.run([*git, "init", "-q", "-b", "main"], check=True)
    subprocess.run([*git, "add", "-A"], check=True)
    subprocess.run([*git, "commit", "-qm", "one"], check=True)
    return repo


def _commit(repo: Path, message: str) -> None:
    git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@example.net"]
    subprocess.run([*git, "commit", "-qam", message], check=True)


@pytest.fixture
def parse_calls(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    calls: list[str] = []
    real = desired_mod.parse_domain_file

    def counting(path: str, data: bytes) -> desired_mod.ParsedDomain:
        calls.append(path)
        return real(path, data)

    monkeypatch.setattr(desired_mod, "parse_domain_file", counting)
    return calls


def test_unchanged_revision_parses_nothing_again(tmp_path: Path, parse_calls: list[str]) -> None:
    """The second check of the same revision reads no domain file and runs no Postfix tool."""
    repo = _repo(tmp_path)
    cache_dir = tmp_path / "state" / "parsed"
    first = validate_snapshot(open_snapshot(repo, "HEAD"), cache=ParseCache(cache_dir))
    assert not first.problems
    assert len(parse_calls) == 3
    parse_calls.clear()
    second = validate_snapshot(open_snapshot(repo, "HEAD"), cache=ParseCache(cache_dir))
    assert parse_calls == []
    assert second.tables == first.tables
    for name, data in first.desired.domains.items():
        cached = second.desired.domains[name]
        assert cached.digest == data.digest
        assert cached.load() == data.load()


def test_one_changed_file_is_parsed_alone(tmp_path: Path, parse_calls: list[str]) -> None:
    """After changing one domain file, only that file is parsed; a new problem in it is still found."""
    repo = _repo(tmp_path)
    cache_dir = tmp_path / "state" / "parsed"
    validate_snapshot(open_snapshot(repo, "HEAD"), cache=ParseCache(cache_dir))
    parse_calls.clear()
    path = repo / "domains" / "example.net.yaml"
    path.write_text(path.read_text().replace("aliases:", "quota: 1\naliases:", 1))
    _commit(repo, "bad key")
    result = validate_snapshot(open_snapshot(repo, "HEAD"), cache=ParseCache(cache_dir))
    assert parse_calls == ["domains/example.net.yaml"]
    assert any("unknown key 'quota'" in p.message for p in result.problems)


def test_cached_blob_under_another_name_is_rechecked(tmp_path: Path, parse_calls: list[str]) -> None:
    """A valid blob copied to a file of another name is parsed again and fails the name rule."""
    repo = _repo(tmp_path)
    cache_dir = tmp_path / "state" / "parsed"
    validate_snapshot(open_snapshot(repo, "HEAD"), cache=ParseCache(cache_dir))
    parse_calls.clear()
    shutil.copy(repo / "domains" / "example.net.yaml", repo / "domains" / "example.info.yaml")
    subprocess.run(["git", "-C", str(repo), "add", "-A"], check=True)
    _commit(repo, "copy")
    result = validate_snapshot(open_snapshot(repo, "HEAD"), cache=ParseCache(cache_dir))
    assert parse_calls == ["domains/example.info.yaml"]
    assert any(p.path == "domains/example.info.yaml" and "file name" in p.message for p in result.problems)


def test_open_reuses_the_loaded_index_until_another_writer_saves(tmp_path: Path) -> None:
    """A long-running agent keeps its loaded cache; a save by another process makes it reload."""
    repo = _repo(tmp_path)
    cache_dir = tmp_path / "state" / "parsed"
    first = ParseCache.open(cache_dir)
    validate_snapshot(open_snapshot(repo, "HEAD"), cache=first)
    assert ParseCache.open(cache_dir) is first
    other = ParseCache(cache_dir)  # e.g. a CLI apply while the agent runs
    write_rows(other.rows_dir(), "0" * 40, [], [])
    other.remember("0" * 40, "x.example", (0, 0, 0, 0), ())
    other.save(["0" * 40])
    reloaded = ParseCache.open(cache_dir)
    assert reloaded is not first
    assert reloaded.get("0" * 40) is not None


def test_parallel_parse_equals_in_process(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Spawned parse workers give the same domains, digests, rows, problems and cache files."""
    repo = _repo(tmp_path)
    bad = repo / "domains" / "bad.example.yaml"
    bad.write_text("domain: bad.example\nmailboxes:\n  - address: a@bad.example\n    password: x\x07\n")
    broken = repo / "domains" / "broken.example.yaml"
    broken.write_text("domain: broken.example\nmailboxes: [\n")
    subprocess.run(["git", "-C", str(repo), "add", "-A"], check=True)
    _commit(repo, "two bad files")
    snapshot = open_snapshot(repo, "HEAD")
    serial = validate_snapshot(snapshot, cache=ParseCache(tmp_path / "serial"))
    monkeypatch.setattr(desired_mod, "PARALLEL_PARSE_BYTES", 1)
    monkeypatch.setattr(desired_mod.os, "cpu_count", lambda: 2)  # two workers even on a one-core machine
    parallel = validate_snapshot(snapshot, cache=ParseCache(tmp_path / "parallel"))
    assert parallel.problems == serial.problems
    assert {p.path for p in parallel.problems} >= {"domains/bad.example.yaml", "domains/broken.example.yaml"}
    assert (
        sorted(parallel.desired.domains)
        == sorted(serial.desired.domains)
        == ["example.com", "example.net", "example.org"]
    )
    for name, data in serial.desired.domains.items():
        other = parallel.desired.domains[name]
        assert (other.digest, other.alias_keys, other.load()) == (data.digest, data.alias_keys, data.load())
    assert sorted(p.name for p in (tmp_path / "parallel" / "rows").iterdir()) == sorted(
        p.name for p in (tmp_path / "serial" / "rows").iterdir()
    )
    # A plain folder (validate --repo): the workers read the files from disk.
    folder = open_snapshot(repo, None)
    from_disk = validate_snapshot(folder)
    assert from_disk.problems == serial.problems
    assert {n: d.digest for n, d in from_disk.desired.domains.items()} == {
        n: d.digest for n, d in serial.desired.domains.items()
    }
    # Only valid domains were cached; the workers' rows files read back as the rows.
    reread = validate_snapshot(snapshot, cache=ParseCache(tmp_path / "parallel"))
    for name, data in serial.desired.domains.items():
        assert reread.desired.domains[name].load() == data.load()
