# pulih — the two commands a new user and CI run are `make demo` and `make test`.
SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
VENV := .venv
# molecule and ansible-runner look for ansible-playbook on PATH.
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)

.PHONY: setup lint unit integration molecule test demo lab-up lab-down bench bench-backup bench-restore bench-files clean

setup:  ## Debian packages and .venv (only what is missing)
	bash scripts/setup.sh

lint: setup  ## ansible-lint (production profile), ruff, mypy
	ansible-lint
	ruff check .
	ruff format --check .
	mypy

unit: setup
	python -m pytest -m "not lab"

integration: setup
	python -m pytest -m lab

molecule: setup
	molecule test --all

test: setup lint  ## everything CI runs (the molecule scenarios are tests/integration/test_molecule.py)
	python -m pytest -n 2 --dist loadfile --no-loadscope-reorder

demo: setup  ## the main job on the embedded default (example register + a 2-host lab)
	bash scripts/demo.sh

lab-up: setup  ## a lab for hands-on work: inventories/lab/
	python -m pulih.lab up --hosts 2 --inventory-dir inventories/lab

lab-down:
	python -m pulih.lab down --inventory-dir inventories/lab

bench: setup  ## lab start-up against the bare tools (~1 min)
	python bench/lab_startup.py

bench-backup: setup  ## pulih backup against pg_dump / mariadb-dump, ~750 MiB of data (~5 min)
	python bench/backup.py

bench-restore: setup  ## pulih restore in place against pg_restore / mariadb, ~750 MiB of data (~5 min)
	python bench/restore.py

bench-files: setup  ## the agent's file-tree backup against plain tar | zstd, ~650 MiB tree (~1 min)
	python bench/files.py

clean: lab-down
	rm -rf .pytest_cache .mypy_cache .ruff_cache reports
