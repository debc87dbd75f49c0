# syntax=docker/dockerfile:1

# The kubescribe image: the webhook server and the git CLI it pushes with.
#
#   docker build -t kubescribe .
#   docker run --rm -p 8443:8443 kubescribe          # dev certificate, localhost only
#
# In a cluster, give it a serving certificate (KUBESCRIBE_TLS_CERT/KUBESCRIBE_TLS_KEY,
# see certs/README.md) and a volume at /var/lib/kubescribe.

# --- build -----------------------------------------------------------------------
# `1` is the newest stable Rust 1.x; Cargo.toml asks for 1.88 or later.
FROM rust:1-bookworm AS build
WORKDIR /src

# All that `cargo build` reads. Cargo.toml declares two [[bin]] targets and cargo
# checks that both files exist, so all of src/ is copied (src/bin/kubescribe-load.rs
# too), though only kubescribe is built. There is no build.rs, and no bench or test
# target is needed to build a binary.
COPY Cargo.toml Cargo.lock ./
COPY src ./src

# The cache mounts keep downloaded crates and compiled dependencies between builds.
# target/ is a cache mount, not part of the layer, so the binary is copied out of it
# in the same step.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin kubescribe \
    && install -D -m 0755 target/release/kubescribe /out/kubescribe

# --- runtime ---------------------------------------------------------------------
# Same Debian release as the build stage, so the binary finds the glibc it was
# linked against.
FROM debian:bookworm-slim

LABEL org.opencontainers.image.title="kubescribe" \
      org.opencontainers.image.description="Kubernetes admission webhook that records every accepted write as a clean YAML file and a git commit (reverse GitOps)." \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.source="https://github.com/kubescribe/kubescribe"

# git: every fetch and push to a remote runs the git CLI, and repository maintenance
# runs `git repack` (under `nice`, which coreutils provides); without git the local
# repository gains a pack file per batch, without end.
# openssh-client: git's transport for ssh remotes (git@host:org/repo.git).
# ca-certificates: git checks https remotes against the system CA store.
# kubescribe's own TLS (rustls) needs no system library.
# tini: PID 1 that reaps orphans (see ENTRYPOINT).
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates git openssh-client tini \
    && rm -rf /var/lib/apt/lists/*

# A named user, not just a number in USER: ssh stops with "No user exists for uid"
# when the uid has no passwd entry. Its home is /tmp, like $HOME below (ssh takes the
# home from passwd, git from $HOME). /var/lib/kubescribe is the only place kubescribe
# writes: the repository (<dataDir>/repo.git) and, with no certificate configured,
# the dev CA (certs/dev, relative to the working directory).
RUN groupadd --system --gid 65532 kubescribe \
    && useradd --system --no-log-init --uid 65532 --gid 65532 \
       --home-dir /tmp --no-create-home --shell /usr/sbin/nologin kubescribe \
    && install -d -o 65532 -g 65532 -m 0750 /var/lib/kubescribe

COPY --from=build /out/kubescribe /usr/local/bin/kubescribe

# With state under /var/lib/kubescribe and HOME=/tmp, the root filesystem can be
# mounted read-only (readOnlyRootFilesystem: true); mount a volume at
# /var/lib/kubescribe (a persistent one keeps unpushed commits across restarts) and
# an emptyDir at /tmp.
# Environment variables beat the config file (flag > variable > file > default), so
# these two override server.listen and dataDir in a config file: change them with the
# variable or the flag (--listen, --data-dir).
ENV HOME=/tmp \
    KUBESCRIBE_LISTEN=0.0.0.0:8443 \
    KUBESCRIBE_DATA_DIR=/var/lib/kubescribe
WORKDIR /var/lib/kubescribe

USER 65532:65532
EXPOSE 8443

# tini forwards SIGTERM to kubescribe (which commits its queue and pushes once before
# it exits) and reaps orphans: when a push outlives remote.timeout, git is killed and
# its ssh child would otherwise stay a zombie of PID 1.
ENTRYPOINT ["/usr/bin/tini", "--", "/usr/local/bin/kubescribe"]
CMD ["serve"]
