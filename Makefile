# Two commands do everything on a fresh machine:
#   make book   set up .venv, vendor the offline JS, execute every notebook, build the HTML strictly
#   make test   set up .venv, run unit + property tests, nbval over book/ and netmoments/course/source/ and,
#               when Chromium is installed, the browser test of the built book (tests/test_browser.py; the book
#               is rebuilt first if any of its sources is newer than the last build)
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.netmoments-installed
JOBS   ?= 2
PYTEST_ARGS := -n $(JOBS) --dist loadfile -p no:cacheprovider -rs
TEST_PATHS  := tests book netmoments/course/source
NBVAL_ARGS  := --nbval --nbval-sanitize-with .nbval_sanitize.cfg --nbval-current-env
# The last successful `make book` touches this; the browser test rebuilds the book when a source is newer.
BOOK_STAMP  := _build/html/.netmoments-book
BOOK_INPUTS := _config.yml _toc.yml requirements.txt $(wildcard book/*.ipynb book/*.md book/*.bib book/data/* book/course/* \
               book/_static/* book/reference/* book/_ext/*.py netmoments/*.py netmoments/*/*.py) \
               scripts/check_book.py scripts/vendor_js.sh
CHROMIUM    := $(firstword $(shell command -v chromium chromium-browser 2>/dev/null))

.PHONY: setup book pdf test test-numerics test-fast bench vendor lab clean assignments assignments-sync grade

$(STAMP): requirements.txt pyproject.toml jupyterlab/overrides.json
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	$(PY) -m ipykernel install --sys-prefix --name python3 --display-name "Python 3 (netmoments)" >/dev/null
	mkdir -p $(VENV)/share/jupyter/lab/settings
	cp jupyterlab/overrides.json $(VENV)/share/jupyter/lab/settings/overrides.json
	$(PY) -m pip check
	touch $(STAMP)

setup: $(STAMP)

vendor: setup
	bash scripts/vendor_js.sh

# `make book REPOSITORY_URL=https://github.com/OWNER/REPO [REPOSITORY_BRANCH=main]` builds the book for publishing:
# repository and issues buttons, and Binder and Colab launch buttons on every notebook page, from a generated
# copy of _config.yml (scripts/book_config.py). Without it the build uses _config.yml as committed, buttons off.
# Either way the build is offline: the buttons are links.
REPOSITORY_URL    ?=
REPOSITORY_BRANCH ?= main
LAUNCH_CONFIG     := _build/launch/_config.yml

book: setup vendor
	rm -rf _build/html _build/.doctrees
ifneq ($(strip $(REPOSITORY_URL)),)
	$(PY) scripts/book_config.py --repository-url '$(REPOSITORY_URL)' --branch '$(REPOSITORY_BRANCH)' --out $(LAUNCH_CONFIG)
	$(VENV)/bin/jupyter-book build . -W -n --keep-going --config $(LAUNCH_CONFIG)
else
	$(VENV)/bin/jupyter-book build . -W -n --keep-going
endif
	$(PY) scripts/check_book.py _build/html
	touch $(BOOK_STAMP)
	@echo "Book built: file://$(CURDIR)/_build/html/index.html"

$(BOOK_STAMP): $(STAMP) $(BOOK_INPUTS)
	$(MAKE) --no-print-directory book

# The whole book as one PDF (_build/pdf/netmoments.pdf), printed from the built HTML by headless Chromium with
# the maths typeset and the widgets drawn (scripts/make_pdf.py; apt-get install -y chromium). The book is
# rebuilt first only when it is stale.
pdf: $(BOOK_STAMP)
	$(PY) scripts/make_pdf.py --html _build/html --out _build/pdf/netmoments.pdf

ifneq ($(CHROMIUM),)
test: setup $(BOOK_STAMP)
	NETMOMENTS_BROWSER_TEST=required $(PY) -m pytest $(PYTEST_ARGS) $(TEST_PATHS) $(NBVAL_ARGS)
	$(MAKE) --no-print-directory test-numerics
else
test: setup
	@echo "SKIP browser test (tests/test_browser.py): no Chromium on this machine (apt-get install -y chromium)"
	$(PY) -m pytest $(PYTEST_ARGS) $(TEST_PATHS) $(NBVAL_ARGS)
	$(MAKE) --no-print-directory test-numerics
endif

# The numerically sensitive tests and notebooks (marker `numerics`) once more on other kernel paths: torch's
# portable (non-AVX) kernels, MKL's conditional-numerical-reproducibility path and oneDNN's AVX2 convolutions.
# Results that only hold on one CPU's rounding fail here on any machine.
test-numerics: setup
	ATEN_CPU_CAPABILITY=default MKL_CBWR=COMPATIBLE ONEDNN_MAX_CPU_ISA=AVX2 $(PY) -m pytest $(PYTEST_ARGS) -m numerics $(TEST_PATHS) $(NBVAL_ARGS)

test-fast: setup
	$(PY) -m pytest $(PYTEST_ARGS) tests

bench: setup
	$(PY) benchmarks/run.py

# Course assignments (nbgrader): student notebooks to hand out, and a CSV of grades for a folder of submissions
# laid out as SUBMISSIONS/<student>/<assignment>.ipynb.
SUBMISSIONS ?= submissions
assignments: setup
	$(PY) -m netmoments.course release _build/assignments --force

# Each source notebook netmoments/course/source/<a>/<a>.ipynb is paired (jupytext) with the script
# course/authoring/<a>/<a>.py: after editing either one outside Jupyter, bring every pair in step (the newer file
# wins; the notebook keeps its outputs).
assignments-sync: setup
	$(VENV)/bin/jupytext --sync $(wildcard netmoments/course/source/*/*.ipynb)

grade: setup
	$(PY) -m netmoments.course grade-all $(SUBMISSIONS) --csv _build/grades.csv --jobs $(JOBS)

# JupyterLab on a copy of the book in lab/ (made once; delete lab/ to start again from the book), so that running
# the notebooks never changes the committed ones. The copies are trusted when made, so their saved widgets show.
# jupyterlab/config switches nbgrader's lab and server extensions off for this session only. Extra options go in
# LAB_ARGS, e.g. make lab LAB_ARGS="--no-browser --allow-root".
LAB_ARGS ?=
lab: setup
	@if [ ! -d lab ]; then \
	  cp -R book lab && \
	  find lab -name '*.ipynb' -not -path '*/.ipynb_checkpoints/*' -exec $(VENV)/bin/jupyter trust {} + && \
	  echo "Copied book/ to lab/ (delete lab/ to start again)"; \
	fi
	cd lab && JUPYTER_CONFIG_PATH="$(CURDIR)/jupyterlab/config$${JUPYTER_CONFIG_PATH:+:$$JUPYTER_CONFIG_PATH}" \
	  $(abspath $(VENV))/bin/jupyter lab $(LAB_ARGS)

clean:
	rm -rf _build _static_vendor .pytest_cache .hypothesis
