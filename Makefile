# Quick start: `make demo` and `make test` each set up .venv on a fresh machine (Python 3.10+ and make only).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
EDGEDL := $(VENV)/bin/edgedl
STAMP := $(VENV)/.edgedl-installed
DEMO_DIR ?= build/demo
ZOO := mlp cnn lstm transformer

.PHONY: demo test install clean

install: $(STAMP)

# Reinstall when the dependency pins or the project metadata change.
$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e '.[all]'
	touch $(STAMP)

demo: $(STAMP)
	@mkdir -p $(DEMO_DIR)
	@for m in $(ZOO); do \
		$(EDGEDL) train $$m --out $(DEMO_DIR)/$$m || exit 1; \
		$(EDGEDL) export $$m --checkpoint $(DEMO_DIR)/$$m -o $(DEMO_DIR)/$$m.onnx || exit 1; \
	done
	$(PY) benchmarks/zoo_table.py $(DEMO_DIR)
	$(EDGEDL) bench $(foreach m,$(ZOO),$(DEMO_DIR)/$(m).onnx) --batch 1,32 --baseline torch \
		--save $(DEMO_DIR)/bench.json --plot $(DEMO_DIR)/bench.png
	$(PY) benchmarks/quantize_zoo.py $(DEMO_DIR) --seconds 0.5 --out $(DEMO_DIR)/quantize
	$(PY) benchmarks/serve_demo.py $(DEMO_DIR)/cnn.onnx
	$(EDGEDL) quantize $(DEMO_DIR)/cnn.onnx --mode static --preset arm64 -o $(DEMO_DIR)/cnn-int8.onnx --no-progress
	rm -rf $(DEMO_DIR)/cnn-rpi5 $(DEMO_DIR)/cnn-rpi5.tar.gz
	$(EDGEDL) package $(DEMO_DIR)/cnn-int8.onnx --name cnn --target rpi5 -o $(DEMO_DIR)/cnn-rpi5
	@echo "next: $(EDGEDL) serve $(DEMO_DIR)/cnn-rpi5 (or deploy it: $(EDGEDL) deploy $(DEMO_DIR)/cnn-rpi5 --host USER@DEVICE);" \
		"its manifest.json lists every file with its sha256"

test: $(STAMP)
	$(PY) -m pytest -q

clean:
	rm -rf build .pytest_cache
