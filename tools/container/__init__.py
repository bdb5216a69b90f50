"""The container recipes checked end to end on a machine without a registry:
``container_check.sh`` builds the Dockerfile and ``pytorch.def`` (through ``def_to_dockerfile``)
from a locally bootstrapped base and runs ``container_selftest.sh`` in each image."""
