"""pytest set-up: the ``shared_data`` mark (tests/shared_data.py)."""

from shared_data import require


def pytest_configure(config):
    config.addinivalue_line("markers", "shared_data(*paths): needs these files of ../shared/data (else skip; "
                                       "fail with YOLOJAX_REQUIRE_SHARED_DATA=1)")


def pytest_runtest_setup(item):
    for mark in item.iter_markers("shared_data"):
        require(*mark.args)
