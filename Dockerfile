# syntax=docker/dockerfile:1
#
# The agent's image, run by the Helm chart (charts/ferrovia) on every node, and the images
# the lab topologies (tests/topologies/*.clab.yml) name, for running them under containerlab.
# `ferrovia lab up FILE` runs the same files without Docker. No registry is reachable from the
# test machines: build here, push to yours, and set the chart's image.repository / image.tag.
#
#   docker build -t ghcr.io/ferrovia/ferrovia:latest .                   # the agent
#   docker build --target bird -t ghcr.io/ferrovia/bird:2.0.12 .        # the reflector lab's BIRD
#
# The chart runs /usr/local/bin/ferrovia itself: `install-cni` in its init container (copies
# this binary to the host's /opt/cni/bin/ferrovia-cni), then `agent --config
# /etc/ferrovia/agent.yaml` (its ConfigMap).
# A ferrovia lab node binds its agent configuration at /etc/ferrovia/agent.yaml and the lab's
# shared datastore directory at /var/lib/ferrovia; the entrypoint runs the agent with that
# configuration, which is what `ferrovia lab` does for a node whose image is
# .../ferrovia. The CNI plugin is installed where runtimes look for it
# (/opt/cni/bin/ferrovia-cni, the same binary).

FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin ferrovia

# BIRD 2 from Debian, started like `ferrovia lab` starts it for a node whose image
# contains "bird": /etc/bird/bird.conf, control socket /run/bird/bird.ctl.
FROM debian:bookworm-slim AS bird
RUN apt-get update \
 && apt-get install -y --no-install-recommends bird2 iproute2 \
 && rm -rf /var/lib/apt/lists/* \
 && mkdir -p /run/bird
ENTRYPOINT ["bird", "-f", "-c", "/etc/bird/bird.conf", "-s", "/run/bird/bird.ctl"]

FROM debian:bookworm-slim AS ferrovia
RUN apt-get update \
 && apt-get install -y --no-install-recommends iproute2 iputils-ping tcpdump procps nftables \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/ferrovia /usr/local/bin/ferrovia
RUN mkdir -p /opt/cni/bin /etc/ferrovia /var/lib/ferrovia /run/ferrovia \
 && ln -s /usr/local/bin/ferrovia /opt/cni/bin/ferrovia-cni
ENTRYPOINT ["/usr/local/bin/ferrovia", "agent", "--config", "/etc/ferrovia/agent.yaml"]
