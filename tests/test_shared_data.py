"""The shared-data mark: a missing fixture skips on a user's clone and fails in CI."""

import pytest

from shared_data import REQUIRED_ENV, SHARED, require


def test_a_missing_fixture_skips_unless_required(monkeypatch, tmp_path):
    missing = tmp_path / "absent.pt"
    monkeypatch.delenv(REQUIRED_ENV, raising=False)
    with pytest.raises(pytest.skip.Exception, match=f"needs {missing}"):
        require(missing)
    monkeypatch.setenv(REQUIRED_ENV, "1")
    with pytest.raises(pytest.fail.Exception, match=f"needs {missing}.*{REQUIRED_ENV}=1"):
        require(missing)
    require(tmp_path)  # present: nothing happens


def test_the_shared_folder_is_the_checkouts_neighbour():
    assert SHARED.parent.name == "shared" and SHARED.name == "data"
