# rsmae: `make demo` and `make test` do all the set-up on a fresh machine.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.rsmae-installed
DATA   ?= ../shared/data
OUT    ?= demo_out

.PHONY: install test quick lint demo bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# Reinstall only when the dependency files change.
$(STAMP): $(BIN)/python pyproject.toml constraints.txt
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check .

# One test process per core (pytest-xdist; each file's tests stay in one process, so its module
# fixtures are built once); tests/conftest.py gives each process its share of torch's threads.
test: $(STAMP) lint
	$(BIN)/python -m pytest -q -n auto --dist loadfile

# The tests not marked slow (end-to-end runs of more than ~3 s), for the edit-test loop; CI runs `make test`.
quick: $(STAMP)
	$(BIN)/python -m pytest -q -n auto --dist loadfile -m "not slow"

# The demo corpus: the real Sentinel-2 L1C scenes of $(DATA) that no evaluation scores on or lies next to
# (9 unlabelled OSCD cities and eo-learn's scenes) in one store. EuroSAT (the probe) and oscd_subset (change
# detection) stay out: ProbeCallback refuses a corpus holding a EuroSAT test image.
# saclay_w stays out: it holds EuroSAT's Residential_2285 and adjoins saclay_e (same granule and dates),
# found by benchmarks/footprint_leaks.py
CORPUS_CITIES := brasilia chongqing dubai lasvegas milano montpellier norcia rio valencia

demo: $(STAMP)
	$(BIN)/python pipelines/tile.py $(foreach c,$(CORPUS_CITIES),"$(DATA)/oscd_unlabelled/$(c)") \
		--sensor s2-l1c --tile-size 64 --workers 2 --out $(OUT)/s2_l1c.zarr
	$(BIN)/python datasets/eolearn_s2l1c/prepare.py "$(DATA)/eolearn_s2l1c_testpatch" --out $(OUT)/eolearn
	$(BIN)/python pipelines/tile.py $(OUT)/eolearn --sensor s2-l1c --band-order eolearn-l1c \
		--tile-size 64 --out $(OUT)/s2_l1c.zarr
	$(BIN)/python pipelines/tile.py "$(DATA)/landsat8_scene" --sensor landsat-oli --bands B2,B3,B4 \
		--band-order B2,B3,B4 --tile-size 128 --workers 2 --out $(OUT)/landsat8.zarr
	$(BIN)/python pipelines/inspect_store.py $(OUT)/s2_l1c.zarr $(OUT)/landsat8.zarr
	@echo "Pretraining a tiny MAE on $(OUT)/s2_l1c.zarr: 9 unlabelled OSCD city pairs and 5 eo-learn"
	@echo "scenes (23 Sentinel-2 L1C scenes; no EuroSAT or oscd_subset image or place, so"
	@echo "the EuroSAT probe scores unseen images): a small corpus that shows the pipeline and a learning"
	@echo "signal, not a useful backbone. Point --data.stores at your own stores."
	$(BIN)/python pipelines/pretrain.py fit --config configs/pretrain/base.yaml \
		--config configs/pretrain/mae_tiny.yaml --data.stores '[$(OUT)/s2_l1c.zarr]' \
		--trainer.callbacks.init_args.root "$(DATA)/eurosat_ms_subset"
	$(BIN)/python pipelines/report.py runs/mae_tiny
	@echo "Transfer to EuroSAT (scored on its test split): the demo MAE against a random init of the same ViT"
	$(BIN)/python benchmarks/transfer.py --config configs/bench/demo.yaml --out $(OUT)/transfer
	@echo "The same two inits by 5-fold CV over all 270 EuroSAT images, beside the spectral floor (per-band"
	@echo "mean and std of each image): where the demo MAE stands, and its budget"
	$(BIN)/python benchmarks/budget_curve.py --random runs/demo_transfer/random.safetensors \
		--run demo_mae=$$(ls -td runs/mae_tiny/logs/version_* | head -1) --out $(OUT)/budget --name demo \
		--cache runs/demo_transfer/probe_cache

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_loader.py
	$(BIN)/python benchmarks/bench_pretrain.py

clean:
	rm -rf $(OUT)
