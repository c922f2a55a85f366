# Two entry points for a fresh Debian machine: `make demo` and `make test`.
# Each installs what it needs (Debian packages, a virtualenv with the PyPI deps).
VENV := .venv
PY := $(VENV)/bin/python
APT_PKGS := gcc libc6-dev python3-dev python3-venv iproute2 nftables

.PHONY: demo test deps venv cross-deps bench

deps:
	@missing=""; for p in $(APT_PKGS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; fi

# editable_mode=compat: a plain sys.path entry, as an installed package has; the
# default editable finder (an import hook loaded at every start) costs each ckpt
# and rstr ~20 ms. setuptools calls compat transitional: without it, the default.
venv: deps
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]' --config-settings editable_mode=compat || $(PY) -m pip install -q -e '.[test]'
	$(PY) -m compileall -q usercr  # as an installed package is: with PYTHONDONTWRITEBYTECODE set, nothing else would

cross-deps:
	bash cross/install-deps.sh

demo: venv
	$(PY) tools/demo.py

test: venv cross-deps
	$(PY) -m pytest -q tests cross

bench: venv
	$(PY) bench/run.py
