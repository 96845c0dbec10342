# Two commands do everything on a fresh machine:
#   make book   set up .venv, vendor the offline JS, execute every notebook, build the HTML strictly
#   make test   set up .venv, run unit + property tests and nbval over book/ and netmoments/course/source/
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.netmoments-installed
JOBS   ?= 2

.PHONY: setup book test test-fast bench vendor lab clean assignments grade

$(STAMP): requirements.txt pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	$(PY) -m ipykernel install --sys-prefix --name python3 --display-name "Python 3 (netmoments)" >/dev/null
	$(PY) -m pip check
	touch $(STAMP)

setup: $(STAMP)

vendor: setup
	bash scripts/vendor_js.sh

book: setup vendor
	rm -rf _build/html _build/.doctrees
	$(VENV)/bin/jupyter-book build . -W -n --keep-going
	$(PY) scripts/check_book.py _build/html
	@echo "Book built: file://$(CURDIR)/_build/html/index.html"

test: setup
	$(PY) -m pytest -n $(JOBS) --dist loadfile tests book netmoments/course/source --nbval --nbval-sanitize-with .nbval_sanitize.cfg --nbval-current-env -p no:cacheprovider

test-fast: setup
	$(PY) -m pytest -n $(JOBS) --dist loadfile tests -p no:cacheprovider

bench: setup
	$(PY) benchmarks/run.py

# Course assignments (nbgrader): student notebooks to hand out, and a CSV of grades for a folder of submissions
# laid out as SUBMISSIONS/<student>/<assignment>.ipynb.
SUBMISSIONS ?= submissions
assignments: setup
	$(PY) -m netmoments.course release _build/assignments

grade: setup
	$(PY) -m netmoments.course grade-all $(SUBMISSIONS) --csv _build/grades.csv --jobs $(JOBS)

lab: setup
	$(VENV)/bin/jupyter lab book/

clean:
	rm -rf _build _static_vendor .pytest_cache .hypothesis
