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
	$(VENV)/bin/mypy core agent proxy controlplane cli demo testing

bench: setup
	$(PY) bench/run.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache

# Regenerate the Python protobuf modules (committed) from proto/*.proto and proto/istio/*.proto.
# protoc writes `from istio import x_pb2` for imports between our files; they live in the
# meshpb package, so the sed makes those imports `from meshpb.istio import x_pb2`.
proto: setup
	$(PY) -m grpc_tools.protoc -Iproto --python_out=meshpb --pyi_out=meshpb proto/*.proto
	$(PY) -m grpc_tools.protoc -Iproto --python_out=meshpb --pyi_out=meshpb \
		--grpc_python_out=meshpb proto/istio/*.proto
	sed -i -E 's/^from istio import /from meshpb.istio import /' \
		meshpb/istio/*_pb2.py meshpb/istio/*_pb2.pyi meshpb/istio/*_pb2_grpc.py
	rm -f meshpb/istio/workload_pb2_grpc.py meshpb/istio/authorization_pb2_grpc.py
	$(PY) -m grpc_tools.protoc -Iproto --python_out=meshpb --pyi_out=meshpb \
		proto/meshnode/*.proto
