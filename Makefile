# Two commands from a fresh clone; each installs what is missing first (scripts/install.sh, skipped when installed).
.PHONY: demo test install

demo:  ## the main job: speedup table + results/demo.png (a few minutes on a CPU)
	bash scripts/demo.sh

test:  ## the test suite (tiny random models; `python -m pytest -q -m slow` adds the real-model tests)
	bash scripts/test.sh

install:  ## only the install (FORCE=1 make install reinstalls)
	bash scripts/install.sh
