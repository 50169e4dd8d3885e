# `make demo` and `make test` bootstrap everything on a fresh machine; a second run installs nothing.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# What napari needs to draw headless (Xvfb + Mesa), the xcb libraries Qt 6 loads, and the
# chromium that the JupyterLab browser test drives through Playwright (no browser download).
APT_PACKAGES := xvfb xauth libgl1-mesa-dri libegl1 libdbus-1-3 libfontconfig1 libxkbcommon-x11-0 \
	libxcb-cursor0 libxcb-icccm4 libxcb-keysyms1 libxcb-xinerama0 libxcb-xinput0 libxcb-randr0 \
	libxcb-render-util0 libxcb-shape0 libxcb-image0 \
	chromium

.PHONY: demo test setup system-deps clean

demo: setup
	$(VENV)/bin/elegantviz demo

# Two workers of one thread each: most tests wait on imports, subprocesses, disks and Qt, so two
# files at a time halve the wall time; one OpenMP thread each, as two spinning pools on 2 cores
# slow each other far more than 2x. A file's tests stay together (its fixtures are built once).
test: setup
	OMP_NUM_THREADS=1 $(PY) -m pytest -q -n 2 --dist loadfile

setup: system-deps $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -c constraints.txt -e '.[all]'
	touch $@

system-deps:
	@missing=$$(for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -z "$$missing" ]; then exit 0; fi; \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		echo "installing system packages for headless napari: $$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	else \
		echo "napari needs these system packages to run headless; install them with:"; \
		echo "  sudo apt-get install $$missing"; \
	fi

clean:
	rm -rf $(VENV) build *.egg-info
