#!/bin/sh
# Runs inside the build chroot (liveup build hooks): say which profile built this image.
set -eu
echo "Built by liveup from profile ${LIVEUP_PROFILE_NAME} ${LIVEUP_PROFILE_VERSION}" > /etc/motd
