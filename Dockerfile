# scimgate container image.
#
#   docker build -t scimgate:0.1.0 .
#
# Runs as uid/gid 65532 (distroless "nonroot") on a read-only root filesystem; the only
# writable path it needs is `state_dir` (mount a volume there: see deploy/).

# ---- build ------------------------------------------------------------------------------
FROM rust:1-bookworm AS build
WORKDIR /src

# Dependencies only: build the locked dependency graph against empty stand-ins for
# src/lib.rs and src/main.rs, so this layer is reused until Cargo.toml, Cargo.lock or benches/
# change. (Cargo.toml declares the benches, so they must exist; a release build never compiles
# them.)
COPY Cargo.toml Cargo.lock ./
COPY benches ./benches
RUN mkdir src \
    && touch src/lib.rs \
    && echo 'fn main() {}' > src/main.rs \
    && cargo build --release --locked \
    && rm -rf src

# The gateway itself. Cargo decides what to rebuild by modification time, and the copied
# sources may be older than the stand-ins built above: touch the crate roots so the real code
# is always compiled (never the empty stand-in binary).
COPY src ./src
RUN touch src/lib.rs src/main.rs \
    && cargo build --release --locked

# ---- runtime ----------------------------------------------------------------------------
# glibc, libgcc and CA certificates, no shell; the ":nonroot" variant's user is 65532.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/release/scimgate /usr/local/bin/scimgate
USER 65532:65532
# 8443: the TLS listener (server.listen); 9901: plain-HTTP admin_listen (/healthz, /readyz,
# /metrics).
EXPOSE 8443 9901
ENTRYPOINT ["/usr/local/bin/scimgate"]
CMD ["serve", "--config", "/etc/scimgate/gateway.yaml"]
