# The README's two commands. Both set up .venv on first use (scripts/setup_env.sh).
.PHONY: demo test setup

setup:
	bash scripts/setup_env.sh

demo:
	bash scripts/demo.sh

test:
	bash scripts/run_tests.sh
