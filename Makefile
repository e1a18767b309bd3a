# The two commands a newcomer needs: `make run` and `make test`.
.PHONY: run test setup migrate db-start db-stop bench seed-demo clean

run:
	@bash scripts/run.sh

test: setup
	.venv/bin/python -m pytest $(PYTEST_ARGS)

setup:
	@bash scripts/setup.sh

migrate: setup
	.venv/bin/python -m app migrate

db-start: setup
	.venv/bin/python -m app db start

seed-demo: setup
	.venv/bin/python -m app seed-demo

db-stop:
	.venv/bin/python -m app db stop

bench: setup
	@for b in scripts/bench/[!_]*.py; do echo "== $$b"; .venv/bin/python $$b || exit 1; done

clean:
	-.venv/bin/python -m app db stop
	rm -rf .data .venv .pytest_cache
