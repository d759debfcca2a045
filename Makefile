# The two commands of the README. Both set up everything they need on a fresh machine.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
EXAMPLE_OUT := out/cat_starry_night.png

.PHONY: example gallery test clean

# The main job: stylize the bundled cat photo with the bundled Starry Night.
example: exported_models/vgg16.onnx
	$(BIN)/nst stylize examples/content.jpg examples/style.jpg -o $(EXAMPLE_OUT) --size 256
	@echo "result: $(EXAMPLE_OUT) (snapshots and the run record $(basename $(EXAMPLE_OUT)).json beside it)"

# The README's gallery (docs/gallery/): only entries whose picture is missing or out of date are run.
gallery: exported_models/vgg16.onnx
	$(BIN)/python scripts/gallery.py

test: $(BIN)/nst
	$(BIN)/python -m pytest

exported_models/vgg16.onnx: | $(BIN)/nst
	$(BIN)/nst export

$(BIN)/nst: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $@

clean:
	rm -rf $(VENV) out exported_models/*.onnx exported_models/graphs
