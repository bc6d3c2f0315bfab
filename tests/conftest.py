"""pytest set-up: the ``shared_data`` mark (tests/shared_data.py); one JAX compilation cache
for the modules that run the train command on the same tiny recipe."""

import pytest

from shared_data import require


@pytest.fixture(scope="session")
def train_compile_cache(tmp_path_factory):
    """A JAX persistent compilation cache directory shared by this session's train subprocesses."""
    return tmp_path_factory.mktemp("jax_cache")


def pytest_configure(config):
    config.addinivalue_line("markers", "shared_data(*paths): needs these files of ../shared/data (else skip; "
                                       "fail with YOLOJAX_REQUIRE_SHARED_DATA=1)")


def pytest_runtest_setup(item):
    for mark in item.iter_markers("shared_data"):
        require(*mark.args)
