# pulih — the two commands a new user and CI run are `make demo` and `make test`.
SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
VENV := .venv
# molecule and ansible-runner look for ansible-playbook on PATH.
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)

.PHONY: setup agent collection bundle messages lint unit integration molecule test demo desk lab-up lab-down bench bench-backup bench-restore bench-files clean

setup:  ## Debian packages and .venv (only what is missing)
	bash scripts/setup.sh

agent: setup  ## the agent's zipapp (roles/pulih_common/files/pulih_agent.pyz) and its request validator
	python scripts/build_agent.py

collection: agent  ## build/pulih-core-VERSION.tar.gz: the collection with the roles, playbooks and agent (README)
	python scripts/build_collection.py

bundle: agent  ## build/pulih-bundle-VERSION.tar.gz: wheels, collection, install.sh, for a machine with no network (README)
	python scripts/build_bundle.py

messages: setup  ## the desk's strings into its catalogs (then translate the new ones in desk.po)
	pybabel --quiet extract -F wrapper/pulih/desk/babel.cfg -k N_ --no-location -o build/desk.pot wrapper/pulih/desk
	pybabel --quiet update -N -D desk -i build/desk.pot -d wrapper/pulih/desk/locale
	pybabel --quiet extract -F wrapper/pulih/locale/mail.babel.cfg -k N_ --no-location -o build/mail.pot wrapper/pulih/mail.py
	pybabel --quiet update -N -D mail -i build/mail.pot -d wrapper/pulih/locale
	pybabel --quiet extract -F wrapper/pulih/locale/forms.babel.cfg -k N_ --no-location -o build/forms.pot wrapper/pulih
	pybabel --quiet update -N -D forms -i build/forms.pot -d wrapper/pulih/locale

lint: setup  ## ansible-lint (production profile), ruff, mypy, the agent's oldest Python, its generated validator
	ansible-lint
	python scripts/build_agent.py --check
	vermin --no-tips --violations --eval-annotations -t=3.9- agent/pulih_agent \
	  collections/ansible_collections/pulih/core/plugins/modules collections/ansible_collections/pulih/core/plugins/module_utils/agent_io.py \
	  collections/ansible_collections/pulih/core/plugins/module_utils/agent_request_schema.py \
	  collections/ansible_collections/pulih/core/plugins/module_utils/canonical.py roles/pulih_common/files/pulih_receiver.py
	ruff check .
	ruff format --check .
	mypy
	lint-imports --no-cache

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

desk: setup  ## the request desk on a lab: prints its URL and the SOP's logins; Ctrl-C stops it
	bash scripts/desk.sh

lab-up: setup  ## a lab for hands-on work: inventories/lab/
	python -m tests.lab up --hosts 2 --inventory-dir inventories/lab

lab-down:
	python -m tests.lab down --inventory-dir inventories/lab

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
