"""``python -m rfscope.probe ARGS`` is ``rfscope probe ARGS`` (handy under ``torchrun -m``)."""

from rfscope.probe.command import standalone

if __name__ == "__main__":
    standalone()
