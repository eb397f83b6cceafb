# Segmentation Uncertainty for QGIS — set-up, demo, tests, benchmarks, packaging.
# `make demo` and `make test` install what is missing (Debian packages need root or sudo).

SHELL := /bin/bash
PYTHON_SYSTEM := /usr/bin/python3
VENV := .venv
PY := $(VENV)/bin/python
# Debian 12's qgis_process wrapper passes --noversioncheck, which qgis_process itself rejects: call the binary.
QGIS_PROCESS := /usr/bin/qgis_process.bin
# Lazy (=): on a fresh machine /usr/bin/python3 only arrives with `make deps`, after the Makefile is read.
SITE = $(shell $(PYTHON_SYSTEM) -c 'import sys; print(f"$(VENV)/lib/python{sys.version_info[0]}.{sys.version_info[1]}/site-packages")' 2>/dev/null)
PLUGIN_DIR := $(CURDIR)/build/plugins
PROFILE := $(CURDIR)/build/qgis-profile
DEB_PACKAGES := qgis python3-qgis qgis-providers python3-gdal gdal-bin python3-rasterio python3-venv python3-pip \
	python3-yaml python3-matplotlib python3-sklearn python3-pytest python3-hypothesis git
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
# qgis_process runs the system Python: give it the venv's packages and this checkout as a plugin folder.
QGIS_ENV = QT_QPA_PLATFORM=offscreen QGIS_PLUGINPATH=$(PLUGIN_DIR) QGIS_CUSTOM_CONFIG_PATH=$(PROFILE) \
	PYTHONPATH=$(CURDIR)/$(SITE)$${PYTHONPATH:+:$$PYTHONPATH}
DEMO_OUT := demo_output

.PHONY: deps demo lint test test-matrix bench package clean

deps: build/.deb-installed $(VENV)/.installed build/plugins/seg_uncertainty

build/.deb-installed:
	@mkdir -p build
	@missing=$$(for p in $(DEB_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "Installing Debian packages:" $$missing; \
		$(SUDO) apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends $$missing; \
	fi
	@touch $@

# pip must never replace what QGIS is built against (numpy, GDAL, rasterio, ...): hold each at the version the
# system has, whatever it is (numpy 1.24 on Debian 12, 2.x on Debian 13 and testing).
build/constraints.txt: build/.deb-installed scripts/system_constraints.py
	@$(PYTHON_SYSTEM) scripts/system_constraints.py > $@.tmp && mv $@.tmp $@

$(VENV)/.installed: requirements.txt requirements-dev.txt build/constraints.txt
	@[ -x $(PY) ] || $(PYTHON_SYSTEM) -m venv --system-site-packages $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -r requirements.txt -r requirements-dev.txt \
		-c build/constraints.txt
	@touch $@

build/plugins/seg_uncertainty:
	@mkdir -p build/plugins
	@ln -sfn $(CURDIR) $@

demo: deps
	@mkdir -p $(DEMO_OUT) $(PROFILE)
	@$(QGIS_ENV) $(QGIS_PROCESS) plugins enable seg_uncertainty >/dev/null 2>&1 || true
	$(QGIS_ENV) $(QGIS_PROCESS) run uncertainty:mcdropout -- \
		INPUT=resources/demo/demo_scene.tif MODEL=resources/demo/demo_model.yaml N_SAMPLES=10 SEED=0 \
		OUTPUT=$(DEMO_OUT)/demo_scene.tif OUTPUT_PROBABILITIES=$(DEMO_OUT)/demo_scene_probabilities.tif \
		OUTPUT_SAMPLES=$(DEMO_OUT)/demo_scene_samples.tif SAMPLE_BANDS=4
	$(QGIS_ENV) $(QGIS_PROCESS) run uncertainty:evaluate -- \
		PROBABILITIES=$(DEMO_OUT)/demo_scene_probabilities.tif UNCERTAINTY=$(DEMO_OUT)/demo_scene_mc_uncertainty.tif \
		REFERENCE=resources/demo/demo_labels.tif TARGET_ERROR=0.02 SAMPLES=$(DEMO_OUT)/demo_scene_samples.tif \
		OUTPUT_HTML=$(DEMO_OUT)/report.html OUTPUT_JSON=$(DEMO_OUT)/report.json
	$(QGIS_ENV) $(QGIS_PROCESS) run uncertainty:hotspots -- \
		INPUT=$(DEMO_OUT)/demo_scene_mc_uncertainty.tif CLASSES=$(DEMO_OUT)/demo_scene.tif CELL_SIZE=64 TOP_N=20 \
		OUTPUT=$(DEMO_OUT)/demo_hotspots.gpkg
	$(QGIS_ENV) $(QGIS_PROCESS) run uncertainty:mcdropout -- \
		INPUT=resources/demo/demo_scene.tif MODEL=resources/demo/demo_model.yaml N_SAMPLES=10 SEED=0 \
		REJECT_ABOVE=$$($(PY) -c 'import json; print(json.load(open("$(DEMO_OUT)/report.json"))["abstention"]["threshold"])') \
		OUTPUT=$(DEMO_OUT)/demo_scene_decided.tif OUTPUT_UNCERTAINTY=
	$(QGIS_ENV) $(PY) scripts/render_outputs.py $(DEMO_OUT) resources/demo/demo_scene.tif \
		$(DEMO_OUT)/demo_scene.tif $(DEMO_OUT)/demo_scene_mc_uncertainty.tif
	@echo "Outputs and PNG renderings are in $(DEMO_OUT)/"

lint: deps
	$(VENV)/bin/ruff check .

test: deps lint
	$(QGIS_ENV) $(PY) -m pytest tests -q -p no:cacheprovider

# The suite on the host's QGIS and in Debian 13 / Debian testing roots kept under /var/cache/seg_uncertainty.
test-matrix:
	$(SUDO) .ci/matrix

bench: deps
	$(QGIS_ENV) $(PY) benchmarks/run.py
	$(QGIS_ENV) $(PY) benchmarks/cluster.py

package:
	$(PYTHON_SYSTEM) scripts/package.py dist/seg_uncertainty.zip

clean:
	rm -rf build dist $(DEMO_OUT)
