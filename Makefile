# The two commands a user types: `make demo` and `make test`. Both set up first.
VENV   := .venv
PY     := $(VENV)/bin/python
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)

.PHONY: setup demo test test-unit test-kernel lint bench clean proto

setup:
	@scripts/setup.sh

demo: setup
	$(VENV)/bin/meshnode demo

test: setup
	$(PY) -m pytest -q -ra

test-unit: setup
	$(PY) -m pytest -q -ra -m "not kernel"

test-kernel: setup
	$(PY) -m pytest -q -ra -m kernel

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy agent proxy controlplane

bench: setup
	$(PY) bench/run.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache

# Regenerate the Python protobuf modules (committed) from proto/*.proto.
proto: setup
	$(PY) -m grpc_tools.protoc -Iproto --python_out=meshpb --pyi_out=meshpb proto/*.proto
