# Developer entry points.  `make test` is the README's test command.
PYTHON ?= python3
# `pytest`, not `python -m pytest`: the latter puts the source tree (without
# the compiled extensions) first on sys.path instead of the installed package.

.PHONY: compile debug test testref testinstalled coverage perf clean

compile:
	$(PYTHON) setup.py build_ext --inplace

debug:
	DWCP_DEBUG=1 $(PYTHON) setup.py build_ext --inplace --cython-always

# The whole suite (data-plane tests run on both backends through the `impl`
# fixture), then the unit tests (codec, framing, storage...) again on the pure-Python backend.
test:
	pytest -p no:cacheprovider --import-mode=importlib --rootdir=. --durations=20 tests
	$(MAKE) testref

# the unit tests, and the transfers end to end (kill -9, cut and corrupted streams, disk full, sealed
# records, every engine, fuzzed and flooded data ports, relays), on the pure-Python twins: the fallback
# engine must keep what the native one keeps
testref:
	DWCP_IMPL=ref pytest -q -p no:cacheprovider --import-mode=importlib --rootdir=. tests/unit \
		tests/integration/test_transfer.py tests/integration/test_sealed.py tests/integration/test_kill9.py \
		tests/integration/test_storage_diskfull.py tests/integration/test_engines.py \
		tests/integration/test_hardening.py tests/integration/test_relay.py tests/integration/test_conn_limits.py

# Line and branch coverage over both backends (the same two passes as `make test`); prints the
# table and the totals per package, writes htmlcov/ (see [tool.coverage] in pyproject.toml).
coverage:
	rm -f .coverage .coverage.*
	pytest -q -p no:cacheprovider --import-mode=importlib --rootdir=. --cov --cov-report= tests
	DWCP_IMPL=ref pytest -q -p no:cacheprovider --import-mode=importlib --rootdir=. --cov --cov-append \
		--cov-report=term --cov-report=html tests/unit
	$(PYTHON) scripts/coverage_by_package.py

# Run the tests against the installed package, away from the source tree.
testinstalled:
	cd "$${HOME}" && pytest -p no:cacheprovider --import-mode=importlib --rootdir=$(CURDIR) $(CURDIR)/tests

perf:
	$(PYTHON) perf/bench_codec.py

clean:
	rm -rf build dist *.egg-info dwcp/_fast/*.c dwcp/_fast/*.so dwcp/_fast/*.html perf/results htmlcov .coverage .coverage.*
