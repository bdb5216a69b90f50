# The test stage of tools/container/container_check.sh: tools/container/container_selftest.sh run as a RUN step on top
# of a built image (IMAGE), through that image's entry point (ENTRY, shell words).
ARG IMAGE
FROM ${IMAGE}
ARG ENTRY
COPY container_selftest.sh /tmp/container_selftest.sh
RUN ENTRY="$ENTRY" /bin/sh /tmp/container_selftest.sh && rm /tmp/container_selftest.sh
