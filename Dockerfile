# syntax=docker/dockerfile:1
#
# lstmd image. CPU (default):
#   docker build -t lstmd .
# CUDA (builds with `--features cuda` on an NVIDIA CUDA base; set the GPU's
# compute capability, e.g. 80 for A100, 90 for H100, since no GPU is visible
# while building):
#   docker build --build-arg VARIANT=cuda --build-arg CUDA_COMPUTE_CAP=90 -t lstmd:cuda .
#
# The server listens on 0.0.0.0:50051 as user 10001, with its data in the
# /data volume. Every flag of `lstmd serve` can be given as an argument or
# as its LSTMD_* environment variable.

ARG VARIANT=cpu
ARG RUST_VERSION=1.95
ARG DEBIAN=trixie
ARG CUDA_VERSION=12.8.1
ARG UBUNTU=ubuntu24.04

# ---- toolchain: Rust with a C compiler (ring needs one) ----
FROM rust:${RUST_VERSION}-slim-${DEBIAN} AS toolchain

# ---- build, CPU ----
FROM toolchain AS build-cpu
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked \
    && install -D -m 0755 target/release/lstmd /out/lstmd

# ---- build, CUDA: nvcc from the devel image, Rust from the toolchain ----
FROM nvidia/cuda:${CUDA_VERSION}-devel-${UBUNTU} AS build-cuda
ARG CUDA_COMPUTE_CAP=80
ENV RUSTUP_HOME=/usr/local/rustup \
    CARGO_HOME=/usr/local/cargo \
    PATH=/usr/local/cargo/bin:${PATH} \
    CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP}
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc g++ libc6-dev pkg-config \
    && rm -rf /var/lib/apt/lists/*
COPY --from=toolchain /usr/local/rustup /usr/local/rustup
COPY --from=toolchain /usr/local/cargo /usr/local/cargo
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --features cuda \
    && install -D -m 0755 target/release/lstmd /out/lstmd

# ---- runtimes ----
FROM debian:${DEBIAN}-slim AS runtime-cpu
ENV LSTMD_DEVICE=cpu

FROM nvidia/cuda:${CUDA_VERSION}-runtime-${UBUNTU} AS runtime-cuda
ENV LSTMD_DEVICE=cuda

# Stage names, not images (DL3006 cannot tell them apart).
# hadolint ignore=DL3006
FROM build-${VARIANT} AS build

# ---- the image ----
# hadolint ignore=DL3006
FROM runtime-${VARIANT}
RUN useradd --system --uid 10001 --user-group --no-create-home \
        --home-dir /nonexistent --shell /usr/sbin/nologin lstmd \
    && mkdir -p /data \
    && chown 10001:10001 /data
COPY --from=build /out/lstmd /usr/local/bin/lstmd
ENV LSTMD_LISTEN=0.0.0.0:50051 \
    LSTMD_DATA_DIR=/data
VOLUME ["/data"]
EXPOSE 50051
USER 10001:10001
ENTRYPOINT ["/usr/local/bin/lstmd", "serve"]
