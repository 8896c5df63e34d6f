# The team's make targets: copier update never changes this file, and the Makefile includes
# it. A target with a `## ` comment shows in `make help`. CI runs `make ci-extra` after
# pre-commit; each `ci-extra::` rule adds a step, for example:
#
# ci-extra:: ## Smoke-test the dev deployment
# 	uv run python -m my_package.smoke
